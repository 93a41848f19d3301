"""Prometheus metrics of one API process, in a registry of its own."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "retentive_request_seconds", "Request latency", ["route", "status"], registry=self.registry
        )
        self.predictions = Counter("retentive_predictions", "Texts classified", registry=self.registry)
        self.feedback = Counter(
            "retentive_feedback_examples", "Feedback examples by outcome", ["outcome"], registry=self.registry
        )
        self.model_version = Gauge("retentive_model_version", "Version being served", registry=self.registry)
        self.versions_behind = Gauge(
            "retentive_model_versions_behind",
            "Published versions newer than the one served",
            registry=self.registry,
        )
        self.refresh_failures = Gauge(
            "retentive_model_refresh_failures",
            "Times loading a newer version failed in this replica (the older one stayed in service)",
            registry=self.registry,
        )
        self.stream_lag = Gauge(
            "retentive_stream_lag",
            "Accepted entries not yet acknowledged by the learner",
            registry=self.registry,
        )
        self.updates = Gauge("retentive_learner_updates", "Learner updates so far", registry=self.registry)
        self.updates_per_s = Gauge(
            "retentive_learner_updates_per_second",
            "Learner updates per second lately",
            registry=self.registry,
        )
        self.examples_per_s = Gauge(
            "retentive_learner_examples_per_second",
            "Examples trained per second lately",
            registry=self.registry,
        )
        self.keep_rate = Gauge(
            "retentive_migu_keep_rate", "Share of gated rows updated by the last step", registry=self.registry
        )
        self.held_back = Gauge(
            "retentive_learner_held_back",
            "Publications of weights held back by the promotion check since the learner began",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "retentive_predict_batch_texts",
            "Texts per batched forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        # Beside the request latency, this splits a slow answer into the model's time and everything else.
        self.batch_seconds = Histogram(
            "retentive_predict_batch_seconds",
            "Seconds per batched forward pass, tokenizing and ranking included",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        # Per probe only for registered sets, named by operators (the first METRICS_PROBE_SETS by name): a
        # held-out set's name holds label text, which a page that needs no key must not show, and there
        # may be a thousand of them.
        self.probe_accuracy = Gauge(
            "retentive_probe_accuracy",
            "Accuracy per registered probe set at the latest evaluation",
            ["probe"],
            registry=self.registry,
        )
        self.probe_forgetting = Gauge(
            "retentive_probe_forgetting",
            "Forgetting per registered probe set at the latest evaluation",
            ["probe"],
            registry=self.registry,
        )
        self.forgetting = Gauge(
            "retentive_forgetting",
            "Over every probe set at the latest evaluation: mean_accuracy, mean_forgetting, max_forgetting",
            ["stat"],
            registry=self.registry,
        )
        self.alarms = Gauge(
            "retentive_forgetting_alarms",
            "Forgetting alarms active at the latest evaluation",
            registry=self.registry,
        )

        self.prequential = Gauge(
            "retentive_prequential_accuracy",
            "Share of trained examples the model predicted right just before learning from each",
            ["window"],
            registry=self.registry,
        )
        self.served_accuracy = Gauge(
            "retentive_served_accuracy",
            "Share of served predictions that got feedback whose label they had",
            ["window"],
            registry=self.registry,
        )
        self.served_coverage = Gauge(
            "retentive_served_coverage",
            "Share of remembered served predictions that got feedback",
            registry=self.registry,
        )
        self.served_delay = Gauge(
            "retentive_served_label_delay_seconds",
            "Mean time from a served prediction to the feedback on it",
            registry=self.registry,
        )

    def observe_batch(self, texts: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.batch_seconds.observe(seconds)

    def observe_counters(self, counters: dict[str, str]) -> None:
        """The learner's counters as published in Redis."""
        for gauge, name in (
            (self.updates, "updates"),
            (self.updates_per_s, "updates_per_s"),
            (self.examples_per_s, "examples_per_s"),
            (self.keep_rate, "keep_rate"),
            (self.held_back, "held_back"),
        ):
            if name in counters:
                gauge.set(float(counters[name]))

    def observe_prequential(self, report: dict[str, Any] | None) -> None:
        """Overall figures only: per label would make one series per label, without bound."""
        for window in ("cumulative", "last_1000"):
            value = (report or {}).get(window)
            if value is not None:
                self.prequential.labels(window).set(value)

    def observe_served(self, report: dict[str, Any]) -> None:
        """Overall figures of served predictions joined with feedback (none per label: unbounded)."""
        for window, value in (
            ("cumulative", report["accuracy"]),
            ("last_1000", report["last_1000"]["accuracy"]),
        ):
            if value is not None:
                self.served_accuracy.labels(window).set(value)
        if report["coverage"] is not None:
            self.served_coverage.set(report["coverage"])
        if report["mean_delay_s"] is not None:
            self.served_delay.set(report["mean_delay_s"])

    def observe_evaluation(self, evaluation: dict[str, Any], registered: dict[str, dict[str, Any]]) -> None:
        """The latest evaluation's summary, and the current figures of registered probe sets."""
        self.probe_accuracy.clear()
        self.probe_forgetting.clear()
        self.forgetting.clear()
        for stat in ("mean_accuracy", "mean_forgetting", "max_forgetting"):
            value = (evaluation.get("summary") or {}).get(stat)
            if value is not None:
                self.forgetting.labels(stat).set(value)
        self.alarms.set(evaluation.get("alarms_active", 0))
        for name, probe in registered.items():
            if probe.get("accuracy") is not None:
                self.probe_accuracy.labels(name).set(probe["accuracy"])
            if probe.get("forgetting") is not None:
                self.probe_forgetting.labels(name).set(probe["forgetting"])


class RequestMetrics:
    """ASGI middleware: latency per route and status, and refused feedback requests.

    Plain ASGI rather than an `@app.middleware` function, which would wrap every response in a stream and
    a task group of its own: on a one-text prediction that cost more than the model's forward pass.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The router records the matched route in the scope it was given.
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.metrics.latency.labels(path, str(status)).observe(time.perf_counter() - began)
            if path == "/v1/feedback" and status >= 400:
                self.metrics.feedback.labels("refused").inc()
