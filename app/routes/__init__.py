"""The API's routers, one per resource; `create_app` includes them all."""

from __future__ import annotations

from app.routes import (
    dashboard,
    dead_letters,
    docs,
    feedback,
    forgetting,
    health,
    labels,
    learner,
    metrics,
    model,
    predict,
    probes,
    snapshots,
)

ROUTERS = [
    health.router,
    predict.router,
    feedback.router,
    model.router,
    snapshots.router,
    forgetting.router,
    probes.router,
    labels.router,
    learner.router,
    metrics.router,
    dashboard.router,
    dead_letters.router,
    docs.router,
]
