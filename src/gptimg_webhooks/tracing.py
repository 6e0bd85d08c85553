"""OpenTelemetry spans (``pip install 'gptimg-webhooks[otel]'``: the API only).

::

    hooks = Webhooks(observers=[TracingObserver()])      # your app configures the SDK

One ``receive`` span per verified delivery, a child of the current span (the web
framework's server span). Its W3C ``traceparent`` is kept with the ledger record, so in
deferred mode the runner's ``process`` span (a worker, a task queue's task) links back
to it, in a trace of its own. Attributes follow OpenTelemetry's messaging conventions
(``messaging.system``, ``messaging.operation.type``, ``messaging.destination.name``,
``messaging.message.id``) plus ``gptimg_webhooks.event``, ``.attempt``, ``.outcome``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._core.observe import Observer, Receipt, Run

__all__ = ["SYSTEM", "TracingObserver"]

SYSTEM = "gptimg_webhooks"
_PROPAGATOR = TraceContextTextMapPropagator()


class TracingObserver(Observer):
    """Trace receipts and runs; ``destination`` names the endpoint (default its system)."""

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, destination: str = SYSTEM
    ) -> None:
        from . import __version__

        self.tracer = trace.get_tracer(SYSTEM, __version__, tracer_provider)
        self.destination = destination

    def _attributes(self, operation: str, delivery_id: str, event: str) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            "messaging.destination.name": self.destination,
            "messaging.message.id": delivery_id,
            "gptimg_webhooks.event": event,
        }

    @contextmanager
    def _receiving(self, receipt: Receipt) -> Iterator[None]:
        attributes = self._attributes("receive", receipt.delivery_id, receipt.event)
        attributes["gptimg_webhooks.mode"] = receipt.mode
        with self.tracer.start_as_current_span(
            f"receive {self.destination}", kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            receipt.traceparent = carrier.get("traceparent")
            try:
                yield
            finally:
                span.set_attribute("gptimg_webhooks.outcome", receipt.outcome)
                span.set_attribute("http.response.status_code", receipt.status)
                if receipt.status >= 500:
                    span.set_status(Status(StatusCode.ERROR, receipt.outcome))

    def receiving(self, receipt: Receipt) -> AbstractContextManager[None]:
        return self._receiving(receipt)

    @contextmanager
    def _running(self, run: Run) -> Iterator[None]:
        links = []
        if run.traceparent:
            linked = trace.get_current_span(
                _PROPAGATOR.extract({"traceparent": run.traceparent})
            ).get_span_context()
            if linked.is_valid:
                links.append(Link(linked))
        attributes = self._attributes("process", run.delivery_id, run.event)
        attributes["gptimg_webhooks.attempt"] = run.attempt
        attributes["gptimg_webhooks.runner"] = run.runner
        with self.tracer.start_as_current_span(
            f"process {self.destination}",
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
        ) as span:
            try:
                yield
            finally:
                span.set_attribute("gptimg_webhooks.outcome", run.outcome)
                if run.outcome not in ("processed", "ignored"):
                    span.set_status(Status(StatusCode.ERROR, run.outcome or "error"))

    def running(self, run: Run) -> AbstractContextManager[None]:
        if run.runner == "inline" and not trace.get_current_span().get_span_context().is_valid:
            # An inline run on a thread the request's context did not follow: the
            # receive span already covers it; a root span of its own would only be noise.
            return nullcontext()
        return self._running(run)
