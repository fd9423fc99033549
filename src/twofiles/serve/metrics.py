"""Prometheus metrics for the server: GET /metrics in the Prometheus text format.

What it owns: `install_metrics(app)` (the /metrics route and the middleware that counts every
HTTP request by endpoint and status and times it), `ServerMetrics` (one CollectorRegistry per
app, so several apps in one process never share counters), `track` (the hook core.submit calls
with each accepted request), and the scrape-time collector that reads the scheduler's
`stats()`. What it leaves to others: the scheduler's numbers (twofiles.scheduler), the routes
(openai_routes.py), the settings (settings.py: `metrics` turns all of this off).

Names follow Prometheus' conventions (`twofiles_` prefix, `_total` counters, `_seconds`
units) and, where one exists, vLLM's name for the same quantity, so existing dashboards map
over: `prompt_tokens_total`, `generation_tokens_total`, `time_to_first_token_seconds`,
`time_per_output_token_seconds`, `num_requests_running` / `_waiting`, `prefix_cache_queries_total`
/ `prefix_cache_hits_total` (both counted in tokens, as vLLM's v1 engine counts them).
`guard_actions_total{guard, stage}` counts what the guards did (serve.guarding.GuardRun).

A request's generations are observed once they are done, from what their RequestHandle
recorded (tokens, submitted_at, first_token_at, finished_at, finish_reason): at the next
submit or scrape, whichever comes first. Reading the handle rather than the route's view of it
counts exactly what the scheduler generated, cancelled and disconnected requests included.
Request-level metrics are labelled with the model the client asked for (a persona by its own
name); the scheduler's gauges and prefix-cache counters with the engine (a persona shares its
base model's).

/metrics is open, like /health, even when API keys are set: it carries counts, timings and
model names (what /health already shows), never prompts or replies, and scrapers are usually
configured without the clients' keys. A server that must not show them runs with
`--no-metrics`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import Match

if TYPE_CHECKING:
    from fastapi import FastAPI

    from twofiles.scheduler import RequestHandle, Scheduler

# Buckets span a laptop CPU and a GPU: a GPU's first token and per-token step take a few ms, a
# CPU's first token on a long prompt tens of seconds.
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60)
PER_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# up to the default request timeout (300 s)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"  # the endpoint label of a path no route matched: bounds the label's values

# Scheduler.stats() keys the prefix cache adds, per model -> (metric name, help). The scheduler
# reports them for every model (zeros with the cache off); keys a model's stats lack export nothing.
_PREFIX_COUNTERS = {
    "prefix_lookup_tokens": (
        "twofiles_prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache",
    ),
    "prefix_hit_tokens": (
        "twofiles_prefix_cache_hits",
        "Prompt tokens found in the prefix cache (not prefilled again)",
    ),
    "prefix_evictions": (
        "twofiles_prefix_cache_evictions",
        "Prefix-cache blocks evicted to make room",
    ),
}
_PREFIX_GAUGES = {
    "prefix_cache_bytes": ("twofiles_prefix_cache_bytes", "Bytes the prefix cache holds"),
    "prefix_cache_blocks": ("twofiles_prefix_cache_blocks", "Blocks the prefix cache holds"),
}


class SchedulerCollector(Collector):
    """The scheduler's state, read at scrape time (nothing to keep in step between scrapes)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Metric]:
        stats = self.scheduler.stats()
        gauges: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            "queued": GaugeMetricFamily(
                "twofiles_num_requests_waiting",
                "Generations waiting for a slot",
                labels=["model"],
            ),
            "active": GaugeMetricFamily(
                "twofiles_num_requests_running",
                "Generations decoding in a slot",
                labels=["model"],
            ),
            "slots": GaugeMetricFamily(
                "twofiles_slots", "Sequence slots (rows of the batched KV cache)", labels=["model"]
            ),
        }
        prefix: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            key: CounterMetricFamily(name, text, labels=["model"])
            for key, (name, text) in _PREFIX_COUNTERS.items()
        }
        prefix |= {
            key: GaugeMetricFamily(name, text, labels=["model"])
            for key, (name, text) in _PREFIX_GAUGES.items()
        }
        hit_rate = GaugeMetricFamily(
            "twofiles_prefix_cache_hit_rate",
            "Prompt tokens found in the prefix cache / tokens looked up, since the server started",
            labels=["model"],
        )
        for model, s in stats.items():
            for key, family in (gauges | prefix).items():
                value = s.get(key)
                if value is not None:
                    family.add_metric([model], value)
            lookups, hits = s.get("prefix_lookup_tokens"), s.get("prefix_hit_tokens")
            if lookups and hits is not None:  # no lookups yet: no rate rather than a made-up 0
                hit_rate.add_metric([model], hits / lookups)
        for family in (*gauges.values(), *prefix.values(), hit_rate):
            if family.samples:
                yield family


class ServerMetrics:
    """One app's metrics: its own registry, the request-level metrics, the scheduler collector."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "twofiles_requests",
            "HTTP requests by endpoint (route template) and response status",
            ["endpoint", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "twofiles_request_duration_seconds",
            "HTTP request duration, to the end of the response body (streams included)",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "twofiles_prompt_tokens",
            "Prompt tokens of accepted requests (as the responses' usage counts them)",
            ["model"],
            registry=r,
        )
        self.generation_tokens = Counter(
            "twofiles_generation_tokens",
            "Tokens generated (a cancelled generation's tokens included)",
            ["model"],
            registry=r,
        )
        self.generations = Counter(
            "twofiles_generations",
            "Finished generations (one per choice) by finish reason: stop, length, cancelled, error",
            ["model", "finish_reason"],
            registry=r,
        )
        self.ttft = Histogram(
            "twofiles_time_to_first_token_seconds",
            "From submission to the first generated token (queueing and prefill)",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.per_token = Histogram(
            "twofiles_time_per_output_token_seconds",
            "A generation's mean time per token after the first",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.guard_actions = Counter(
            "twofiles_guard_actions",
            "Guard actions (serve --guard, a request's guard field) by guard and stage: a "
            "blocked input, a spotlighted tool result or passage, a dropped tool call, a reply "
            "the output filter cut",
            ["guard", "stage"],
            registry=r,
        )
        r.register(SchedulerCollector(scheduler))
        self._lock = threading.Lock()
        # (the model the client asked for, a handle): a persona's handles run on its base
        # model's engine (handle.model) but are the persona's requests
        self._running: list[tuple[str, RequestHandle]] = []

    def track(self, model: str, prompt_tokens: int, handles: Sequence[RequestHandle]) -> None:
        """An accepted request for `model`: count its prompt, and observe its handles once they
        are done, under the same name."""
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        with self._lock:
            self._running.extend((model, h) for h in handles)
        self.sweep()  # observes what finished since: the list stays as long as what is running

    def sweep(self) -> None:
        """Observe the tracked handles that are done and forget them."""
        with self._lock:
            done = [(m, h) for m, h in self._running if h.done]
            self._running = [(m, h) for m, h in self._running if not h.done]
        for model, h in done:
            self.generation_tokens.labels(model).inc(len(h.tokens))
            self.generations.labels(model, h.finish_reason or "error").inc()
            if h.first_token_at is None:  # cancelled or failed before its first token
                continue
            self.ttft.labels(model).observe(h.first_token_at - h.submitted_at)
            if len(h.tokens) > 1 and h.finished_at is not None:
                per_token = (h.finished_at - h.first_token_at) / (len(h.tokens) - 1)
                self.per_token.labels(model).observe(per_token)

    def scrape(self) -> bytes:
        self.sweep()
        return generate_latest(self.registry)


class _CountRequests:
    """Pure ASGI middleware: counts each HTTP request by endpoint and status, and times it to
    the end of its body, so a stream is timed whole. A request that raises counts as 500."""

    def __init__(self, app: Any, metrics: ServerMetrics, routes: Sequence[Any]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    def endpoint(self, scope: dict) -> str:
        """The matched route's template: it keeps the label's values bounded
        (/v1/models/{name:path}, not one value per name). The router leaves the route in the
        scope; a request answered before routing (413) is matched here."""
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] != Match.NONE), None)
        return getattr(route, "path", None) or UNMATCHED

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") == METRICS_PATH:
            await self.app(scope, receive, send)
            return
        status = 500
        t0 = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            endpoint = self.endpoint(scope)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.duration.labels(endpoint).observe(time.perf_counter() - t0)


def install_metrics(app: FastAPI) -> None:
    """GET /metrics and the request-counting middleware, unless `app.state.settings.metrics`
    is off; the metrics live at `app.state.metrics` (None when off)."""
    from fastapi import Response

    settings = getattr(app.state, "settings", None)
    if settings is not None and not settings.metrics:
        app.state.metrics = None
        return
    metrics = ServerMetrics(app.state.scheduler)
    app.state.metrics = metrics
    app.add_middleware(_CountRequests, metrics=metrics, routes=app.router.routes)

    @app.get(METRICS_PATH, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)


def track(
    app: FastAPI, model: str, prompts: Sequence[Sequence[int]], handles: Sequence[RequestHandle]
) -> None:
    """core.submit's hook: a request was accepted (no-op when metrics are off)."""
    metrics: ServerMetrics | None = getattr(app.state, "metrics", None)
    if metrics is not None:
        metrics.track(model, sum(len(p) for p in prompts), handles)


__all__ = ["ServerMetrics", "install_metrics", "track"]
