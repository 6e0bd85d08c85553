"""OpenTelemetry: a receive span under the server span; a linked process span in deferred mode."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gptimg_webhooks import GenerationSucceeded, Webhooks
from gptimg_webhooks.dispatch import run_pointer
from gptimg_webhooks.stores import Store, open_store
from gptimg_webhooks.testing import events, random_secret, signed
from gptimg_webhooks.tracing import TracingObserver
from gptimg_webhooks.worker import Worker
from tests.support.services import ensure_postgres, ensure_redis

SECRET = random_secret()


@pytest.fixture
def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("django", marks=pytest.mark.django_db(transaction=True)),
    ]
)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each ledger the receiver can keep a record's traceparent in, on a namespace of its own."""
    name = f"gptimg_t_trace_{uuid.uuid4().hex[:10]}"
    url = {
        "memory": lambda: "memory://",
        "sqlite": lambda: f"sqlite:///{tmp_path}/ledger.sqlite3",
        "redis": lambda: f"{ensure_redis()}?prefix={name}:",
        "postgres": lambda: f"{ensure_postgres()}?table={name}",
        "django": lambda: "django://",
    }[request.param]()
    store = open_store(url)
    yield store
    if request.param == "postgres":
        store.drop_schema()  # type: ignore[attr-defined]
    elif request.param == "redis":
        import redis

        client = redis.Redis.from_url(ensure_redis())
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
        client.close()
    store.close()


@pytest.mark.parametrize("runner", ["pointer", "worker"])
def test_deferred_receive_span_is_a_child_of_the_server_span_and_the_worker_span_links_to_it(
    traced: tuple[TracerProvider, InMemorySpanExporter], ledger: Store, runner: str
) -> None:
    # The link travels through the ledger record: every store must keep its traceparent.
    provider, exporter = traced
    store = ledger
    hooks = Webhooks(
        SECRET,
        store=store,
        mode="deferred",
        observers=[TracingObserver(provider)],
        include_shared=False,
    )

    @hooks.on("generation.succeeded")
    def fine(event: GenerationSucceeded) -> None:
        pass

    delivery = signed(events.succeeded(), SECRET)
    server = provider.get_tracer("framework")
    with server.start_as_current_span("POST /hooks/gptimg", kind=SpanKind.SERVER):
        response = hooks.handle("POST", delivery.headers, delivery.body)
    assert response.json["status"] == "queued"
    record = store.records()[0]
    assert record.traceparent is not None  # kept with the record for the runner

    # A task queue's task (run_pointer) or the built-in worker; neither has a current span.
    if runner == "pointer":
        assert run_pointer(hooks, record.key) == "processed"
    else:
        assert asyncio.run(Worker(hooks).run(once=True)) == 1
    hooks.close()

    spans = {span.name: span for span in exporter.get_finished_spans()}
    server_span = spans["POST /hooks/gptimg"]
    receive = spans["receive gptimg_webhooks"]
    process = spans["process gptimg_webhooks"]
    assert receive.parent is not None
    assert receive.parent.span_id == server_span.context.span_id
    assert receive.context.trace_id == server_span.context.trace_id
    assert receive.attributes["messaging.message.id"] == delivery.delivery_id
    assert receive.attributes["messaging.operation.type"] == "receive"
    assert receive.attributes["gptimg_webhooks.outcome"] == "queued"
    assert receive.attributes["gptimg_webhooks.event"] == "generation.succeeded"
    assert record.traceparent.split("-")[2] == format(receive.context.span_id, "016x")

    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None  # a trace of its own, linked back
    assert [link.context.span_id for link in process.links] == [receive.context.span_id]
    assert process.attributes["gptimg_webhooks.attempt"] == 1
    assert process.attributes["gptimg_webhooks.outcome"] == "processed"
    assert process.attributes["gptimg_webhooks.runner"] == "deferred"
    assert process.attributes["messaging.message.id"] == delivery.delivery_id


def test_inline_async_run_span_nests_under_the_receive_span(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    hooks = Webhooks(
        SECRET, store="memory://", observers=[TracingObserver(provider)], include_shared=False
    )

    @hooks.on("generation.succeeded")
    async def fine(event: GenerationSucceeded) -> None:
        pass

    delivery = signed(events.succeeded(), SECRET)
    response = asyncio.run(hooks.handle_async("POST", delivery.headers, delivery.body))
    assert response.status == 200
    spans = {span.name: span for span in exporter.get_finished_spans()}
    receive, process = spans["receive gptimg_webhooks"], spans["process gptimg_webhooks"]
    assert process.parent is not None and process.parent.span_id == receive.context.span_id
    assert receive.attributes["gptimg_webhooks.outcome"] == "processed"


def test_rejected_requests_make_no_span(
    traced: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = traced
    hooks = Webhooks(SECRET, store="memory://", observers=[TracingObserver(provider)])
    delivery = signed(events.succeeded(), SECRET, wrong_secret=True)
    assert hooks.handle("POST", delivery.headers, delivery.body).status == 401
    assert exporter.get_finished_spans() == ()
