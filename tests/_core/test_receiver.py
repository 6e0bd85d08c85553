"""The receiver end to end in-process, through both drivers (they share one flow)."""

from __future__ import annotations

import asyncio
import contextvars
import gzip
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from gptimg_webhooks import (
    ConfigurationError,
    Delivery,
    Event,
    GenerationSucceeded,
    Response,
    Webhooks,
    on,
    shared_registry,
)
from gptimg_webhooks._core.handoff import Threads
from gptimg_webhooks.stores import State
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.stores.sqlite import SQLiteStore
from tests.support.concurrency import default_executor_threads
from tests.support.contract import payload

from .conftest import SECRET, Clock, request

Drive = Callable[[Webhooks, str, Any, bytes], Response]


def _sync(hooks: Webhooks, method: str, headers: Any, body: bytes) -> Response:
    return hooks.handle(method, headers, body)


def _async(hooks: Webhooks, method: str, headers: Any, body: bytes) -> Response:
    return asyncio.run(hooks.handle_async(method, headers, body))


@pytest.fixture(params=[_sync, _async], ids=["sync", "async"])
def drive(request: pytest.FixtureRequest) -> Drive:
    fn: Drive = request.param
    return fn


def post(drive: Drive, hooks: Webhooks, body: bytes, headers: Any) -> Response:
    return drive(hooks, "POST", headers, body)


def test_new_delivery_runs_handler_once_and_answers_200(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    seen: list[str] = []
    hooks.on("generation.succeeded")(lambda e: seen.append(e.data.generation_id))
    response = post(drive, hooks, body, request(body))
    assert (response.status, response.json["status"]) == (200, "processed")
    assert len(seen) == 1


def test_retry_with_same_delivery_id_is_duplicate(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    seen: list[object] = []
    hooks.on("generation.succeeded")(seen.append)
    headers = request(body)
    post(drive, hooks, body, headers)
    response = post(drive, hooks, body, headers)
    assert (response.status, response.json["status"]) == (200, "duplicate")
    assert len(seen) == 1


def test_replay_with_fresh_delivery_id_is_duplicate(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    seen: list[object] = []
    hooks.on("generation.succeeded")(seen.append)
    post(drive, hooks, body, request(body))
    response = post(drive, hooks, body, request(body, delivery=str(uuid.uuid4())))
    assert (response.status, response.json["status"]) == (200, "duplicate")
    assert len(seen) == 1


@pytest.fixture(params=["memory", "sqlite"])
def any_store(request: pytest.FixtureRequest, clock: Clock, tmp_path: Any) -> Any:
    # The memory ledger knows a done record without I/O; SQLite is asked.
    if request.param == "memory":
        return MemoryStore(clock=clock)
    return SQLiteStore(tmp_path / "ledger.db")


def test_done_body_with_a_mismatched_event_header_is_duplicate(
    drive: Drive, any_store: Any, clock: Clock, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=any_store, clock=clock, include_shared=False)
    seen: list[object] = []
    hooks.on("generation.succeeded")(seen.append)
    hooks.on("generation.failed")(seen.append)
    tampered = request(body, event="generation.failed")
    # Before the body ran, the unsigned header's disagreement is refused...
    assert post(drive, hooks, body, tampered).json["error"] == "event_mismatch"
    assert post(drive, hooks, body, request(body)).json["status"] == "processed"
    # ...after, the signed body is a duplicate whatever the header says.
    response = post(drive, hooks, body, tampered)
    assert (response.status, response.json["status"]) == (200, "duplicate")
    assert len(seen) == 1


def test_done_body_retried_past_max_event_age_is_duplicate_not_stale(
    drive: Drive, any_store: Any, clock: Clock
) -> None:
    hooks = Webhooks(SECRET, store=any_store, clock=clock, max_event_age=3600, include_shared=False)
    body = payload("gen_late")  # completedAt 2026-04-26T01:23:50Z
    clock.now = 1_777_166_630.0 + 60
    assert post(drive, hooks, body, request(body)).json["status"] == "ignored"
    clock.now += 3600 + 301  # a retry comes after the age window closed
    response = post(drive, hooks, body, request(body))
    assert (response.status, response.json["status"]) == (200, "duplicate")
    other = payload("gen_late_other")  # never ran: still too old
    assert post(drive, hooks, other, request(other)).json["error"] == "stale_event"


def test_done_duplicate_is_answered_without_parsing_its_body(
    drive: Drive, hooks: Webhooks, body: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptimg_webhooks._core import protocol

    parsed: list[bytes] = []
    parse = protocol.parse_event_json

    def counting(raw: bytes, name: str) -> Any:
        parsed.append(raw)
        return parse(raw, name)

    monkeypatch.setattr(protocol, "parse_event_json", counting)
    post(drive, hooks, body, request(body))
    response = post(drive, hooks, body, request(body, delivery=str(uuid.uuid4())))
    assert response.json["status"] == "duplicate"
    assert parsed == [body]


def test_forged_copy_of_a_done_body_is_still_401(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    post(drive, hooks, body, request(body))
    forged = request(body, secret="whsec_not_the_endpoints_secret")
    assert post(drive, hooks, body, forged).status == 401


def test_event_without_handler_is_recorded_and_answers_200(
    drive: Drive, hooks: Webhooks, store: MemoryStore, body: bytes
) -> None:
    response = post(drive, hooks, body, request(body))
    assert (response.status, response.json["status"]) == (200, "ignored")
    assert [r.state for r in store.records()] == [State.DONE]


def test_unknown_event_is_ignored_unless_a_catch_all_handles_it(
    drive: Drive, hooks: Webhooks
) -> None:
    body = json.dumps({"event": "generation.cancelled", "data": {"generationId": "g"}}).encode()
    headers = request(body, event="generation.cancelled")
    assert post(drive, hooks, body, headers).json["status"] == "ignored"
    caught: list[Event] = []
    hooks.on("*")(caught.append)
    body2 = body.replace(b'"g"', b'"h"')
    response = post(drive, hooks, body2, request(body2, event="generation.cancelled"))
    assert (response.status, response.json["status"]) == (200, "processed")
    assert [e.event for e in caught] == ["generation.cancelled"]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"X-Gptimg-Signature": None}, 401, "invalid_signature"),
        ({"X-Gptimg-Signature": ""}, 401, "invalid_signature"),
        ({"X-Gptimg-Signature": "0" * 64}, 401, "invalid_signature"),
        ({"X-Gptimg-Delivery": None}, 400, "invalid_headers"),
        ({"X-Gptimg-Delivery": "1234"}, 400, "invalid_headers"),
        ({"X-Gptimg-Event": None}, 400, "invalid_headers"),
        ({"X-Gptimg-Event": "Generation Succeeded"}, 400, "invalid_headers"),
        ({"X-Gptimg-Event": "generation.failed"}, 400, "event_mismatch"),
        ({"Content-Encoding": "gzip"}, 415, "unsupported_encoding"),
    ],
)
def test_bad_requests_get_their_status_and_a_json_reason(
    drive: Drive,
    hooks: Webhooks,
    body: bytes,
    change: dict[str, str | None],
    status: int,
    code: str,
) -> None:
    ran: list[object] = []
    hooks.on("generation.succeeded")(ran.append)
    headers = {k: v for k, v in {**request(body), **change}.items() if v is not None}
    response = post(drive, hooks, body, headers)
    assert (response.status, response.json["error"]) == (status, code)
    assert response.headers[0] == ("content-type", "application/json")
    assert not ran


def test_repeated_signature_header_is_401_and_repeated_delivery_is_400(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    good = request(body)
    sig = good["X-Gptimg-Signature"]
    pairs = [(k.lower().encode(), v.encode()) for k, v in good.items()]
    twice_sig = [*pairs, (b"x-gptimg-signature", sig.encode())]
    assert post(drive, hooks, body, twice_sig).status == 401
    twice_id = [*pairs, (b"x-gptimg-delivery", str(uuid.uuid4()).encode())]
    assert post(drive, hooks, body, twice_id).json["error"] == "invalid_headers"


def test_header_names_are_case_insensitive(drive: Drive, hooks: Webhooks, body: bytes) -> None:
    headers = [(k.upper(), v) for k, v in request(body).items()]
    assert post(drive, hooks, body, headers).status == 200


def test_other_methods_get_405_with_allow(drive: Drive, hooks: Webhooks) -> None:
    response = drive(hooks, "GET", {}, b"")
    assert response.status == 405
    assert ("allow", "POST") in response.headers


def test_body_over_the_cap_is_413(drive: Drive, store: MemoryStore) -> None:
    hooks = Webhooks(SECRET, store=store, max_body_size=100, include_shared=False)
    body = payload("gen_big")
    assert post(drive, hooks, body, request(body)).status == 413


def test_gzip_is_refused_not_decompressed(drive: Drive, hooks: Webhooks, body: bytes) -> None:
    packed = gzip.compress(body)
    headers = request(packed, **{"Content-Encoding": "gzip"})
    assert post(drive, hooks, packed, headers).status == 415
    identity = request(body, **{"Content-Encoding": "identity"})
    assert post(drive, hooks, body, identity).status == 200


def test_signed_invalid_json_is_400_and_kept_as_failed_record(
    drive: Drive, hooks: Webhooks, store: MemoryStore
) -> None:
    raw = b'{"event":"generation.succeeded","event":"generation.failed","data":{}}'
    response = post(drive, hooks, raw, request(raw))
    assert (response.status, response.json["error"]) == (400, "invalid_payload")
    (record,) = store.records()
    assert record.state is State.FAILED
    assert record.body == raw
    assert record.error is not None and "duplicate key" in record.error


def test_handler_error_fails_record_answers_500_and_retry_runs_again(
    drive: Drive, hooks: Webhooks, store: MemoryStore, body: bytes
) -> None:
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def flaky(event: GenerationSucceeded, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            raise RuntimeError("boom")

    headers = request(body)
    first = post(drive, hooks, body, headers)
    assert (first.status, first.json["error"]) == (500, "handler_failed")
    (record,) = store.records()
    assert (record.state, record.body) == (State.FAILED, body)
    assert record.error == "RuntimeError: boom"
    second = post(drive, hooks, body, headers)
    assert second.status == 200
    assert attempts == [1, 2]
    assert store.records()[0].state is State.DONE


def test_concurrent_duplicate_in_progress_gets_409_and_no_second_run(
    store: MemoryStore, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=store, include_shared=False)
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @hooks.on("generation.succeeded")
    def slow(event: GenerationSucceeded) -> None:
        runs.append(1)
        entered.set()
        release.wait(5)

    results: list[Response] = []
    first = threading.Thread(
        target=lambda: results.append(hooks.handle("POST", request(body), body))
    )
    first.start()
    assert entered.wait(5)
    concurrent = hooks.handle("POST", request(body, delivery=str(uuid.uuid4())), body)
    assert (concurrent.status, concurrent.json["error"]) == (409, "delivery_in_progress")
    release.set()
    first.join(5)
    assert results[0].status == 200
    assert runs == [1]


def test_expired_lease_lets_a_later_retry_run_the_handler(
    drive: Drive, store: MemoryStore, clock: Clock, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=store, clock=clock, lease=60, include_shared=False)
    # A process that died mid-handler leaves a processing record with a lease.
    claim = store.claim(_entry(body), lease=60)
    assert claim.attempt == 1
    assert post(drive, hooks, body, request(body)).status == 409
    clock.now += 61
    attempts: list[int] = []
    hooks.on("generation.succeeded")(lambda e, d: attempts.append(d.attempt))
    assert post(drive, hooks, body, request(body)).status == 200
    assert attempts == [2]


def _entry(body: bytes) -> Any:
    import hashlib

    from gptimg_webhooks.stores import Entry

    return Entry(
        hashlib.sha256(body).hexdigest(), str(uuid.uuid4()), "generation.succeeded", None, body
    )


def test_handler_gets_delivery_metadata(drive: Drive, store: MemoryStore, body: bytes) -> None:
    hooks = Webhooks(["whsec_new", SECRET], store=store, include_shared=False)
    got: list[Delivery] = []
    hooks.on("generation.succeeded")(lambda e, d: got.append(d))
    delivery_id = str(uuid.uuid4())
    assert post(drive, hooks, body, request(body, delivery=delivery_id)).status == 200
    (delivery,) = got
    assert delivery.id == delivery_id
    assert delivery.secret.index == 1
    assert delivery.attempt == 1
    assert delivery.event == "generation.succeeded"
    assert delivery.received_at.tzinfo is not None


def test_handlers_run_in_documented_order(drive: Drive, hooks: Webhooks, body: bytes) -> None:
    order: list[str] = []
    try:
        on("*")(lambda e: order.append("shared-any"))
        on("generation.succeeded")(lambda e: order.append("shared"))
        shared_hooks = Webhooks(SECRET, store="memory://")
        shared_hooks.on("*")(lambda e: order.append("own-any"))
        shared_hooks.on("generation.succeeded")(lambda e: order.append("own-1"))
        shared_hooks.on("generation.succeeded", "generation.failed")(
            lambda e: order.append("own-2")
        )
        assert post(drive, shared_hooks, body, request(body)).status == 200
    finally:
        shared_registry.clear()
    assert order == ["own-1", "own-2", "shared", "own-any", "shared-any"]


def test_first_raising_handler_stops_the_chain(drive: Drive, hooks: Webhooks, body: bytes) -> None:
    ran: list[str] = []

    def bad(event: Event) -> None:
        raise ValueError("no")

    hooks.on("generation.succeeded")(bad)
    hooks.on("generation.succeeded")(lambda e: ran.append("second"))
    assert post(drive, hooks, body, request(body)).status == 500
    assert ran == []


def test_error_hook_gets_exception_event_and_delivery(
    drive: Drive, hooks: Webhooks, body: bytes
) -> None:
    reports: list[tuple[str, str, int]] = []

    @hooks.on("generation.succeeded")
    def bad(event: Event) -> None:
        raise KeyError("k")

    @hooks.on_error
    def report(exc: BaseException, event: Event, delivery: Delivery) -> None:
        reports.append((type(exc).__name__, event.event, delivery.attempt))

    assert post(drive, hooks, body, request(body)).status == 500
    assert reports == [("KeyError", "generation.succeeded", 1)]


def test_unknown_event_name_registration_fails_fast_unless_opted_in(hooks: Webhooks) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown event name 'generation\.succeded'"):
        hooks.on("generation.succeded")
    hooks.on("generation.cancelled", allow_unknown=True)(print)
    assert hooks.routes("generation.cancelled")[0].func is print


def test_sync_handler_runs_off_the_event_loop_thread(hooks: Webhooks, body: bytes) -> None:
    threads: list[int] = []
    hooks.on("generation.succeeded")(lambda e: threads.append(threading.get_ident()))

    async def main() -> int:
        await hooks.handle_async("POST", request(body), body)
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads and threads[0] != loop_thread


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting the thread hops made through it."""

    hops = 0

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        self.hops += 1
        return super().submit(*args, **kwargs)


def hops_and_loop_thread(hooks: Webhooks, body: bytes, seen: list[int]) -> tuple[int, int]:
    """Answer one delivery under asyncio; return the thread hops it took and the loop's thread.

    Hops are counted through the loop's default executor and the library's own threads.
    """
    warm_up = payload("gen_warm_up")  # takes the first request's ledger prune out of the count
    assert hooks.handle("POST", request(warm_up), warm_up).status == 200
    seen.clear()
    executor = CountingExecutor()
    own = [0]
    submit = Threads.submit

    def counted(threads: Threads, func: Callable[..., Any], *args: Any) -> Any:
        own[0] += 1
        return submit(threads, func, *args)

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(executor)
        assert (await hooks.handle_async("POST", request(body), body)).status == 200
        return threading.get_ident()

    Threads.submit = counted  # type: ignore[method-assign]
    try:
        loop_thread = asyncio.run(main())
    finally:
        Threads.submit = submit  # type: ignore[method-assign]
    return executor.hops + own[0], loop_thread


def test_thread_bound_ledger_and_sync_handlers_share_one_thread_hop(
    tmp_path: Any, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=SQLiteStore(str(tmp_path / "l.sqlite3")), include_shared=False)
    handler_threads: list[int] = []
    hooks.on("generation.succeeded")(lambda e: handler_threads.append(threading.get_ident()))
    hooks.on("generation.succeeded")(lambda e: handler_threads.append(threading.get_ident()))
    hops, loop_thread = hops_and_loop_thread(hooks, body, handler_threads)
    assert hops == 1  # claim, both handlers and the done mark: not one hop each
    assert loop_thread not in handler_threads


def test_ledger_without_io_joins_its_sync_handlers_thread_hop(body: bytes) -> None:
    claimed_in: list[int] = []

    class Recording(MemoryStore):
        def claim(self, entry: Any, *, lease: float) -> Any:
            claimed_in.append(threading.get_ident())
            return super().claim(entry, lease=lease)

    hooks = Webhooks(SECRET, store=Recording(), include_shared=False)
    handler_threads: list[int] = []
    hooks.on("generation.succeeded")(lambda e: handler_threads.append(threading.get_ident()))
    claimed_in.clear()
    hops, loop_thread = hops_and_loop_thread(hooks, body, handler_threads)
    assert hops == 1
    assert claimed_in[-1:] == handler_threads and loop_thread not in handler_threads


def test_async_handler_on_a_thread_bound_ledger_runs_on_the_event_loop(
    tmp_path: Any, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=SQLiteStore(str(tmp_path / "l.sqlite3")), include_shared=False)
    handler_threads: list[int] = []

    @hooks.on("generation.succeeded")
    async def handler(event: GenerationSucceeded) -> None:
        handler_threads.append(threading.get_ident())

    hops, loop_thread = hops_and_loop_thread(hooks, body, handler_threads)
    assert handler_threads == [loop_thread]
    # SQLite's claim and done mark run on the loop too, as nothing else holds its lock.
    assert hops == 0


def test_async_handler_runs_under_the_sync_driver(hooks: Webhooks, body: bytes) -> None:
    seen: list[str] = []

    @hooks.on("generation.succeeded")
    async def handler(event: GenerationSucceeded) -> None:
        await asyncio.sleep(0)
        seen.append(event.data.generation_id)

    assert hooks.handle("POST", request(body), body).status == 200
    assert len(seen) == 1


_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("_VAR", default="request's")


def test_async_run_is_its_own_task_with_its_own_context(hooks: Webhooks, body: bytes) -> None:
    seen: dict[str, object] = {}

    @hooks.on("generation.succeeded")
    async def handler(event: GenerationSucceeded) -> None:
        # A handler's asyncio.timeout() cancels the task it runs in: never the request's.
        seen["task"] = asyncio.current_task()
        _VAR.set("handler's")

    async def receive() -> None:
        response = await hooks.handle_async("POST", request(body), body)
        assert response.status == 200
        seen["request"] = asyncio.current_task()
        seen["value"] = _VAR.get()

    asyncio.run(receive())
    assert seen["task"] is not None and seen["task"] is not seen["request"]
    assert seen["value"] == "request's"


def test_async_run_that_never_waits_is_answered_within_the_turn_its_task_starts_in(
    hooks: Webhooks, body: bytes
) -> None:
    @hooks.on("generation.succeeded")
    async def handler(event: GenerationSucceeded) -> None:
        pass

    async def receive() -> tuple[int, int]:
        loop, turns = asyncio.get_running_loop(), [0]

        def count() -> None:  # runs once in every turn of the loop
            turns[0] += 1
            loop.call_soon(count)

        loop.call_soon(count)
        response = await hooks.handle_async("POST", request(body), body)
        return response.status, turns[0]

    # The memory ledger never waits either: from Python 3.12 (eager tasks) the whole answer
    # takes no turn of the loop; before, the run's task takes its first step in the next
    # turn, and the request is answered in that same turn, not one later.
    assert asyncio.run(receive()) == (200, 0 if sys.version_info >= (3, 12) else 1)


def test_ledger_calls_are_answered_while_sync_handlers_block_many_threads(
    tmp_path: Any, body: bytes
) -> None:
    # A blocking ledger (SQLite) and an async handler: the claim is a ledger call in a
    # thread. Sync handlers blocking more threads than asyncio's default executor has
    # must not hold it up.
    blocked = default_executor_threads() + 2
    hooks = Webhooks(
        SECRET,
        store=SQLiteStore(str(tmp_path / "l.sqlite3")),
        include_shared=False,
        reply_deadline=0.2,
    )
    release, lock = threading.Event(), threading.Lock()
    running = [0]

    @hooks.on("generation.succeeded")
    async def noted(event: GenerationSucceeded) -> None:
        pass

    @hooks.on("generation.succeeded")
    def blocking(event: GenerationSucceeded) -> None:
        with lock:
            running[0] += 1
        release.wait(30)

    async def scenario() -> tuple[list[int], int, float]:
        firsts = [
            hooks.handle_async("POST", request(b), b)
            for b in (payload(f"gen_block{i}") for i in range(blocked))
        ]
        answers = await asyncio.gather(*firsts)  # answered at the deadline, still running
        waited = time.monotonic() + 10
        while running[0] < blocked:  # polled on the loop: no thread to wait in
            assert time.monotonic() < waited, f"{running[0]} of {blocked} handlers started"
            await asyncio.sleep(0.01)
        begun = time.monotonic()
        again = await hooks.handle_async("POST", request(body), body)
        took = time.monotonic() - begun
        release.set()
        return [a.status for a in answers], again.status, took

    try:
        statuses, status, took = asyncio.run(scenario())
    finally:
        release.set()
        hooks.close()
    assert statuses == [202] * blocked
    assert status == 202  # its sync handler blocks too: the deadline answers it
    assert took < 2.0, f"a claim waited {took:.1f} s behind blocked handlers"


def test_auto_disable_guard_answers_2xx_before_the_provider_limit(
    drive: Drive, store: MemoryStore
) -> None:
    hooks = Webhooks(SECRET, store=store, failure_threshold=3, include_shared=False)

    @hooks.on("generation.succeeded")
    def broken(event: GenerationSucceeded) -> None:
        if event.data.generation_id.startswith("gen_bad"):
            raise RuntimeError("down")

    def send(gid: str) -> Response:
        body = payload(gid)
        return post(drive, hooks, body, request(body))

    statuses = [send(f"gen_bad_{i}").status for i in range(4)]
    assert statuses == [500, 500, 500, 200]
    assert len(store.records(State.FAILED)) == 3  # the provider retries these
    # The one answered 2xx is handed to the runners: pending, retried after the backoff.
    (handed,) = store.records(State.PENDING)
    assert handed.error is not None
    assert "RuntimeError" in handed.error
    assert [send(f"gen_bad_{i}").status for i in range(10, 13)] == [500, 500, 500]
    assert send("gen_ok").status == 200  # success resets the streak
    assert [send(f"gen_bad_{i}").status for i in range(20, 24)] == [500, 500, 500, 200]


def test_guard_streak_is_shared_through_the_ledger(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    a = Webhooks(SECRET, store=url, failure_threshold=2, include_shared=False)
    b = Webhooks(SECRET, store=url, failure_threshold=2, include_shared=False)
    for hooks in (a, b):
        hooks.on("generation.succeeded")(lambda e: 1 / 0)
    answers = []
    for i, hooks in enumerate([a, b, a, b]):
        body = payload(f"gen_{i}")
        answers.append(hooks.handle("POST", request(body), body).status)
    assert answers == [500, 500, 200, 500]


def test_stale_event_is_rejected_by_signed_timestamp(drive: Drive, store: MemoryStore) -> None:
    clock = Clock(1_777_000_000.0)  # 2026-04-24
    hooks = Webhooks(SECRET, store=store, clock=clock, max_event_age=3600, include_shared=False)
    body = payload("gen_old")  # completedAt 2026-04-26T01:23:50Z
    clock.now = 1_777_166_630.0 + 3600 + 301 - 0.0  # past max age + skew
    response = post(drive, hooks, body, request(body))
    assert (response.status, response.json["error"]) == (400, "stale_event")
    clock.now = 1_777_166_630.0 - 1000  # 1000 s in the future, beyond 300 s skew
    assert post(drive, hooks, body, request(body)).json["error"] == "stale_event"
    clock.now = 1_777_166_630.0 + 60
    assert post(drive, hooks, body, request(body)).status == 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_event_age": 60}, "at least 15 minutes"),
        ({"max_event_age": 3600, "retention": 3600}, "shorter than retention"),
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"path": "hooks"}, "path must start"),
        ({"store": "nosuch://x"}, "unknown store URL scheme"),
        ({"mode": "later"}, "mode must be"),
    ],
)
def test_bad_configuration_fails_at_startup(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("store", "memory://")
    with pytest.raises(ConfigurationError, match=message):
        Webhooks(SECRET, **kwargs)


def test_unreachable_ledger_answers_503_with_retry_after_and_runs_nothing(
    drive: Drive, tmp_path: Any, body: bytes
) -> None:
    hooks = Webhooks(SECRET, store=SQLiteStore(str(tmp_path)), include_shared=False)
    ran: list[object] = []
    hooks.on("generation.succeeded")(ran.append)
    response = post(drive, hooks, body, request(body))
    assert (response.status, response.json["error"]) == (503, "store_unavailable")
    assert ("retry-after", "30") in response.headers
    assert ran == []


def test_rejections_are_logged_at_warning_without_secret_or_body(
    hooks: Webhooks, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gptimg_webhooks")
    delivery_id = str(uuid.uuid4())
    headers = {**request(body, delivery=delivery_id), "X-Gptimg-Signature": "0" * 64}
    hooks.handle("POST", headers, body)
    hooks.handle("POST", request(body), body)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "invalid_signature" in r.getMessage() and delivery_id in r.getMessage() for r in warnings
    )
    for record in caplog.records:
        text = record.getMessage()
        assert SECRET not in text
        assert body.decode() not in text


@pytest.mark.parametrize(
    "names",
    [
        [b"x-gptimg-signature", b"x-gptimg-delivery", b"x-gptimg-event"],
        [b"X-Gptimg-Signature", b"x-gptimg-delivery", b"x-gptimg-event"],
        [b"x-gptimg-signature", b"X-GPTIMG-SIGNATURE", b"x-gptimg-delivery", b"x-gptimg-event"],
        [b"x-gptimg-signature", b"x-gptimg-signature", b"x-gptimg-event", b"content-encoding"],
    ],
)
def test_header_lists_are_read_the_same_as_a_mapping_of_their_pairs(names: list[bytes]) -> None:
    from gptimg_webhooks._core.protocol import collect_headers

    pairs = [(name, f"v{i}".encode()) for i, name in enumerate(names)]
    by_loop = collect_headers(iter(pairs))  # not a list: the general loop
    assert collect_headers(pairs) == by_loop
    assert collect_headers([(n.decode(), v.decode()) for n, v in pairs]) == by_loop
