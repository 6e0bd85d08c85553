"""Prometheus metrics (``pip install 'gptimg-webhooks[prometheus]'``).

::

    from gptimg_webhooks.metrics import instrument
    instrument(hooks)                      # default registry; or registry=CollectorRegistry()
    # serve it: prometheus_client.make_asgi_app() / make_wsgi_app(), or django_view()

Counters and histograms come from the receiver's observer hooks; the ledger's gauges
(pending, oldest pending age, dead, failure streak) are read from the store when
Prometheus scrapes, so every process reports the shared ledger's truth.

===================================================  =========================================
``gptimg_webhooks_deliveries_total{event,outcome}``  answers, by event and answer word
``gptimg_webhooks_signature_failures_total{cause}``  ``missing``, ``repeated``, ``mismatch``
``gptimg_webhooks_answer_latency_seconds``           arrival to answer (histogram)
``gptimg_webhooks_handler_duration_seconds``         one run of handlers, ``{event,runner}``
``gptimg_webhooks_runs_total{event,runner,outcome}`` runs and their outcome
``gptimg_webhooks_pending_records``                  records waiting for a runner
``gptimg_webhooks_oldest_pending_age_seconds``       since the oldest pending was queued
``gptimg_webhooks_dead_records``                     kept for replay
``gptimg_webhooks_failed_records``                   waiting for the provider's retry
``gptimg_webhooks_failure_streak{endpoint}``         non-2xx answers in a row
``gptimg_webhooks_failure_streak_limit{endpoint}``   the provider disables the endpoint here (8)
``gptimg_webhooks_ledger_up``                        1 when the last scrape reached the ledger
===================================================  =========================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ._core.observe import Answer, Observer, Run
from ._core.receiver import PROVIDER_FAILURE_LIMIT, Webhooks

__all__ = ["LedgerCollector", "PrometheusObserver", "django_view", "instrument", "render"]

logger = logging.getLogger("gptimg_webhooks")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 4.0, 5.0, 10.0)


class PrometheusObserver(Observer):
    """Count answers, signature failures and runs; time answers and handlers."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.deliveries = Counter(
            "gptimg_webhooks_deliveries",
            "Answers to webhook requests, by event and answer word.",
            ["event", "outcome"],
            registry=registry,
        )
        self.signature_failures = Counter(
            "gptimg_webhooks_signature_failures",
            "Requests refused for their signature, by cause.",
            ["cause"],
            registry=registry,
        )
        self.latency = Histogram(
            "gptimg_webhooks_answer_latency_seconds",
            "Seconds from a request's arrival at the receiver to its answer.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.handler_duration = Histogram(
            "gptimg_webhooks_handler_duration_seconds",
            "Seconds one run of a delivery's handlers took (done mark included).",
            ["event", "runner"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.runs = Counter(
            "gptimg_webhooks_runs",
            "Runs of deliveries' handlers, by runner and outcome.",
            ["event", "runner", "outcome"],
            registry=registry,
        )

    def answered(self, answer: Answer) -> None:
        self.deliveries.labels(answer.event or "", answer.outcome).inc()
        if answer.cause:
            self.signature_failures.labels(answer.cause).inc()
        self.latency.observe(answer.latency)

    @contextmanager
    def _run(self, run: Run) -> Iterator[None]:
        try:
            yield
        finally:
            self.handler_duration.labels(run.event, run.runner).observe(run.duration)
            self.runs.labels(run.event, run.runner, run.outcome or "error").inc()

    def running(self, run: Run) -> AbstractContextManager[None]:
        return self._run(run)


class LedgerCollector(Collector):
    """Read the ledger's gauges when Prometheus scrapes (one ``stats()`` query).

    ``hooks`` may be a function returning the receiver (Django builds it on first use).
    """

    def __init__(self, hooks: Webhooks | Callable[[], Webhooks]) -> None:
        self.hooks = hooks

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "gptimg_webhooks_ledger_up", "1 when this scrape could read the ledger."
        )
        try:
            hooks = self.hooks if isinstance(self.hooks, Webhooks) else self.hooks()
            stats = hooks.store.stats([hooks.guard_counter])
        except Exception as exc:  # a scrape reports the ledger down, never fails
            logger.warning("metrics: cannot read the ledger (%s)", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for name, doc, value in (
            ("pending_records", "Records waiting for a runner.", stats.pending),
            ("dead_records", "Records out of attempts, kept for replay.", stats.dead),
            ("failed_records", "Failed records waiting for a retry.", stats.failed),
            ("processing_records", "Records under a runner's lease.", stats.processing),
        ):
            yield GaugeMetricFamily(f"gptimg_webhooks_{name}", doc, value=value)
        yield GaugeMetricFamily(
            "gptimg_webhooks_oldest_pending_age_seconds",
            "Seconds since the oldest pending record was queued (0: none pending).",
            value=stats.oldest_pending_age or 0.0,
        )
        streak = stats.streaks.get(hooks.guard_counter)
        if streak is not None:
            family = GaugeMetricFamily(
                "gptimg_webhooks_failure_streak",
                "Non-2xx answers in a row to verified deliveries, per endpoint.",
                labels=["endpoint"],
            )
            family.add_metric([hooks.path], streak)
            yield family
        limit = GaugeMetricFamily(
            "gptimg_webhooks_failure_streak_limit",
            "The provider disables an endpoint after this many failures in a row.",
            labels=["endpoint"],
        )
        limit.add_metric([hooks.path], PROVIDER_FAILURE_LIMIT)
        yield limit


def instrument(hooks: Webhooks, registry: CollectorRegistry = REGISTRY) -> PrometheusObserver:
    """Observe ``hooks`` and collect its ledger's gauges into ``registry``."""
    observer = PrometheusObserver(registry)
    hooks.observers.add(observer)
    registry.register(LedgerCollector(hooks))
    return observer


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """Return the exposition text and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def django_view(registry: CollectorRegistry = REGISTRY) -> Callable[[Any], Any]:
    """Return a Django view serving ``registry`` (``path("metrics", django_view())``)."""
    from django.http import HttpResponse

    def metrics(request: Any) -> HttpResponse:
        body, content_type = render(registry)
        return HttpResponse(body, content_type=content_type)

    return metrics
