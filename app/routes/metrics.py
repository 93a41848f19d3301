"""Prometheus metrics of this replica, with the learner's counters and latest evaluation read from Redis."""

from __future__ import annotations

import redis
from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.deps import HolderDep, KeysDep, MetricsDep, ProducerDep, RedisDep
from streams.keys import StreamKeys
from streams.notify import probe_figures, read_counters, read_prequential, recent_evaluations
from streams.replies import as_text
from streams.served import served_report

# Per-set series are kept for this many registered sets (the first by name), so a scrape, which needs no
# key, reads a small bounded amount however many sets exist.
METRICS_PROBE_SETS = 50

router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def prometheus(
    client: RedisDep, keys: KeysDep, holder: HolderDep, producer: ProducerDep, metrics: MetricsDep
) -> Response:
    served = holder.current
    metrics.model_version.set(served.version if served else 0)
    metrics.versions_behind.set(holder.versions_behind())
    metrics.refresh_failures.set(holder.refresh_failures)
    try:
        metrics.stream_lag.set(await run_in_threadpool(producer.backlog))
        counters = await run_in_threadpool(read_counters, client, keys)
        metrics.observe_counters(counters)
        latest = await run_in_threadpool(recent_evaluations, client, keys, 1)
        registered = await run_in_threadpool(_registered_figures, client, keys)
        metrics.observe_evaluation(latest[0] if latest else {}, registered)
        metrics.observe_prequential(await run_in_threadpool(read_prequential, client, keys))
        metrics.observe_served(await run_in_threadpool(served_report, client, keys, False))
    except redis.RedisError:
        pass  # serve what is known; the stream gauges keep their last values
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _registered_figures(client: redis.Redis, keys: StreamKeys) -> dict[str, dict]:
    """The current figures of the first `METRICS_PROBE_SETS` registered probe sets, by name."""
    names = sorted(as_text(name) for name in client.hkeys(keys.probes))[:METRICS_PROBE_SETS]
    return probe_figures(client, keys, names)
