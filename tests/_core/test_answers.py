"""Answers that keep the endpoint alive: the reply deadline, the guard, no leaks, no outage
mistaken for input, retention and pruning off the request path."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from typing import Any

import pytest

from gptimg_webhooks import Event, StoreUnavailable, Webhooks
from gptimg_webhooks._core.ledger import Applied, Change, State
from gptimg_webhooks.stores.memory import MemoryStore
from tests.support.contract import payload

from .conftest import SECRET, request


def hooks_on(store: MemoryStore, **options: Any) -> Webhooks:
    return Webhooks(SECRET, store=store, include_shared=False, **options)


def post(hooks: Webhooks, body: bytes, **headers: str) -> tuple[int, str]:
    answer = hooks.handle("POST", {**request(body), **headers}, body)
    data = answer.json
    return answer.status, data.get("status") or data.get("error")


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Outage(MemoryStore):
    """A memory ledger that is down for its first ``down`` operations."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down

    def apply(self, change: Change) -> Applied:
        if self.down:
            self.down -= 1
            raise StoreUnavailable("redis://10.0.0.7:6379 (claim): connection refused")
        return super().apply(change)


# The reply deadline ------------------------------------------------------------------


def test_slow_handler_is_answered_202_at_the_deadline_and_finishes_behind_it() -> None:
    store = MemoryStore()
    hooks = hooks_on(store, reply_deadline=0.3)
    done: list[int] = []

    @hooks.on("generation.succeeded")
    def slow(event: Event) -> None:
        time.sleep(0.8)
        done.append(1)

    body = payload("gen_deadline")
    started = time.monotonic()
    assert post(hooks, body) == (202, "processing")
    assert time.monotonic() - started < 0.6
    assert store.records()[0].state is State.PROCESSING
    wait_until(lambda: store.records()[0].state is State.DONE)
    assert done == [1]
    assert post(hooks, body) == (200, "duplicate")
    hooks.close()


def test_async_slow_handler_is_answered_202_and_finishes_on_the_loop() -> None:
    store = MemoryStore()
    hooks = hooks_on(store, reply_deadline=0.3)
    done: list[int] = []

    @hooks.on("generation.succeeded")
    async def slow(event: Event) -> None:
        await asyncio.sleep(0.8)
        done.append(1)

    async def scenario() -> int:
        body = payload("gen_deadline_async")
        answer = await hooks.handle_async("POST", request(body), body)
        for _ in range(200):
            if done:
                break
            await asyncio.sleep(0.02)
        return answer.status

    assert asyncio.run(scenario()) == 202
    assert done == [1]
    assert store.records()[0].state is State.DONE
    hooks.close()


def test_sync_slow_handler_under_asgi_finishes_after_its_event_loop_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    hooks = hooks_on(store, reply_deadline=0.2)

    @hooks.on("generation.succeeded")
    def slow(event: Event) -> None:
        time.sleep(0.5)

    body = payload("gen_deadline_sync_asgi")
    with caplog.at_level(logging.WARNING):
        answer = asyncio.run(hooks.handle_async("POST", request(body), body))
        assert (answer.status, answer.json["status"]) == (202, "processing")
        # The run ends in its thread after the loop that waited for it closed: it still
        # lands, and telling the closed loop is no error.
        wait_until(lambda: store.records()[0].state is State.DONE)
        time.sleep(0.05)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    hooks.close()


def test_handler_failing_after_the_deadline_is_handed_to_runners_not_counted() -> None:
    store = MemoryStore()
    hooks = hooks_on(store, reply_deadline=0.2, failure_threshold=1)

    @hooks.on("generation.succeeded")
    def slow_then_broken(event: Event) -> None:
        time.sleep(0.4)
        raise RuntimeError("downstream down")

    for i in range(5):  # the provider saw 202s only: nothing may count towards disabling
        assert post(hooks, payload(f"gen_late_fail_{i}")) == (202, "processing")
    wait_until(lambda: all(r.state is State.PENDING for r in store.records()))
    assert all("downstream down" in (r.error or "") for r in store.records())
    assert all(r.available_at is not None for r in store.records())  # after the backoff
    assert not store.bump(hooks.guard_counter, hooks.guard_limit)  # the count stayed at 0
    hooks.close()


def test_a_delivery_not_yet_recorded_at_the_deadline_is_never_answered_2xx() -> None:
    class SlowClaims(MemoryStore):
        def apply(self, change: Change) -> Applied:
            if change.transition.name == "claim":
                time.sleep(0.5)  # a jammed ledger, still inside its own timeout
                raise StoreUnavailable("jammed")
            return super().apply(change)

    hooks = hooks_on(SlowClaims(), reply_deadline=0.2)
    assert post(hooks, payload("gen_jammed")) == (503, "store_unavailable")
    hooks.close()


def test_a_delivery_not_yet_recorded_at_the_deadline_is_never_answered_2xx_under_asgi() -> None:
    class SlowClaims(MemoryStore):
        def apply(self, change: Change) -> Applied:
            if change.transition.name == "claim":
                time.sleep(0.5)
                raise StoreUnavailable("jammed")
            return super().apply(change)

    hooks = hooks_on(SlowClaims(), reply_deadline=0.2)
    hooks.on("generation.succeeded")(lambda event: None)  # sync: claimed in its thread
    body = payload("gen_jammed_asgi")
    answer = asyncio.run(hooks.handle_async("POST", request(body), body))
    assert (answer.status, answer.json["error"]) == (503, "store_unavailable")
    hooks.close()


# The guard ---------------------------------------------------------------------------


def test_guard_counts_503s_it_gave_while_the_ledger_was_down() -> None:
    hooks = hooks_on(Outage(down=3))  # failure_threshold 5: 5 non-2xx answers at most
    hooks.on("generation.succeeded")(lambda e: 1 / 0)
    answers = [post(hooks, payload(f"gen_arith_{i}"))[0] for i in range(5)]
    # 3 503s, then 2 handler failures: 5 in a row; the next would be the 6th.
    assert answers[:5] == [503, 503, 503, 500, 500]
    assert post(hooks, payload("gen_arith_5")) == (200, "failed_accepted")
    hooks.close()


def test_guard_counts_signed_rejections_and_answers_2xx_before_the_limit() -> None:
    hooks = hooks_on(MemoryStore())
    answers = []
    for i in range(8):
        body = payload(f"gen_mismatch_{i}")
        answers.append(post(hooks, body, **{"X-Gptimg-Event": "generation.failed"}))
    assert answers[:5] == [(400, "event_mismatch")] * 5
    assert answers[5] == (200, "rejected_accepted")
    assert answers[6:] == [(400, "event_mismatch")] * 2  # the count started again
    hooks.close()


def test_an_unsigned_request_is_never_counted() -> None:
    hooks = hooks_on(MemoryStore())
    body = payload("gen_unsigned")
    for _ in range(10):
        assert post(hooks, body, **{"X-Gptimg-Signature": "0" * 64}) == (401, "invalid_signature")
    assert not hooks.store.bump(hooks.guard_counter, hooks.guard_limit)
    hooks.close()


def test_guard_counts_in_progress_answers(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    hooks = hooks_on(store, failure_threshold=2, reply_deadline=None)
    release = threading.Event()
    hooks.on("generation.succeeded")(lambda e: release.wait(5))
    body = payload("gen_held")
    delivery = request(body)["X-Gptimg-Delivery"]
    thread = threading.Thread(target=post, args=(hooks, body), kwargs=request(body))
    thread.start()
    wait_until(lambda: store.records() and store.records()[0].state is State.PROCESSING)
    with caplog.at_level(logging.WARNING, logger="gptimg_webhooks"):
        copies = [post(hooks, body, **{"X-Gptimg-Delivery": delivery}) for _ in range(3)]
    release.set()
    thread.join(5)
    assert copies == [(409, "delivery_in_progress")] * 2 + [(202, "processing")]
    # Each answer's log line names the delivery, so an operator can follow the copy.
    assert [repr(delivery) in r.getMessage() for r in caplog.records] == [True] * 3
    assert {getattr(r, "delivery_id", None) for r in caplog.records} == {delivery}
    hooks.close()


def test_a_success_resets_the_count_for_its_endpoint_only() -> None:
    store = MemoryStore()
    a = hooks_on(store, path="/a", failure_threshold=2)
    b = hooks_on(store, path="/b", failure_threshold=2)
    for hooks in (a, b):
        hooks.on("generation.succeeded")(
            lambda e: 1 / 0 if e.data.generation_id.startswith("gen_bad") else None
        )
    assert post(a, payload("gen_bad_a1"))[0] == 500
    assert post(b, payload("gen_bad_b1"))[0] == 500
    assert post(b, payload("gen_ok_b")) == (200, "processed")  # resets b's count only
    assert post(a, payload("gen_bad_a2"))[0] == 500
    assert post(a, payload("gen_bad_a3")) == (200, "failed_accepted")
    assert post(b, payload("gen_bad_b2"))[0] == 500
    a.close()
    b.close()


# Nothing internal leaks ----------------------------------------------------------------


def test_503_says_store_unavailable_and_when_to_retry_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = hooks_on(Outage(down=1))
    answer = hooks.handle("POST", request(body := payload("gen_leak")), body)
    assert answer.status == 503
    assert dict(answer.headers)["retry-after"] == "30"
    text = answer.body.decode()
    assert "10.0.0.7" not in text
    assert "6379" not in text
    assert set(json.loads(text)) == {"ok", "error", "message"}
    assert any("10.0.0.7" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    hooks.close()


MARKER = "Zq7marker"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event":"generation.succeeded","data":{"generationId":"' + MARKER.encode() + b'"',
        b'{"event":"generation.succeeded","'
        + MARKER.encode()
        + b'":1,"'
        + MARKER.encode()
        + b'":2}',
        b'{"event":"generation.succeeded","data":{"generationId":5,"x":"'
        + MARKER.encode()
        + b'"}}',
        b'{"event":"' + MARKER.encode() + b'.x","data":{}}',
    ],
)
def test_no_log_line_carries_body_bytes(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hooks = hooks_on(MemoryStore())
    answer = hooks.handle("POST", request(raw), raw)
    assert answer.status == 400
    assert MARKER not in answer.body.decode()
    for record in caplog.records:
        assert MARKER not in record.getMessage()
    hooks.close()


# Input never mistaken for an outage -----------------------------------------------------


def test_lone_surrogate_is_invalid_payload_recorded_failed_with_its_raw_body() -> None:
    store = MemoryStore()
    hooks = hooks_on(store)
    body = payload("gen_\ud83d", event="generation.failed")
    assert post(hooks, body, **{"X-Gptimg-Event": "generation.failed"}) == (
        400,
        "invalid_payload",
    )
    (record,) = store.records()
    assert (record.state, record.body) == (State.FAILED, body)
    hooks.close()


# max_event_age for every event ------------------------------------------------------------


def test_unknown_event_without_a_timestamp_is_accepted_with_max_event_age() -> None:
    hooks = hooks_on(MemoryStore(), max_event_age=3600)
    body = b'{"event":"generation.queued","data":{"generationId":"gen_q"}}'
    headers = request(body, event="generation.queued")
    assert hooks.handle("POST", headers, body).json["status"] == "ignored"
    hooks.close()


def test_unknown_event_is_judged_by_its_signed_timestamp() -> None:
    now = time.time()
    hooks = hooks_on(MemoryStore(), max_event_age=3600, clock=lambda: now)
    old = b'{"event":"generation.queued","data":{"createdAt":"2020-01-01T00:00:00Z"}}'
    answer = hooks.handle("POST", request(old, event="generation.queued"), old)
    assert (answer.status, answer.json["error"]) == (400, "stale_event")
    hooks.close()


# Retention and pruning ------------------------------------------------------------------


class Watched(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.pruned_from: list[str] = []

    def prune(self, older_than: float, states: Any = (State.DONE,)) -> int:
        self.pruned_from.append(threading.current_thread().name)
        return super().prune(older_than, states)


def test_retention_prunes_done_records_off_the_request_path_and_keeps_failed_ones() -> None:
    store = Watched()
    hooks = hooks_on(store, retention=0.05)
    hooks.prune_interval = 0.2
    hooks.on("generation.succeeded")(
        lambda e: 1 / 0 if e.data.generation_id == "gen_broken" else None
    )
    assert post(hooks, payload("gen_fine"))[0] == 200
    assert post(hooks, payload("gen_broken"))[0] == 500
    wait_until(lambda: len(store.records()) == 1)
    assert store.records()[0].state is State.FAILED  # kept for replay
    assert set(store.pruned_from) == {"gptimg-webhooks-keeper"}
    hooks.close()


def test_failed_records_go_only_by_an_explicit_setting_and_that_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Watched()
    hooks = hooks_on(store, retention=0.05, failed_retention=0.05)
    hooks.prune_interval = 0.2
    hooks.on("generation.succeeded")(lambda e: 1 / 0)
    assert post(hooks, payload(f"gen_broken_{uuid.uuid4().hex[:6]}"))[0] == 500
    wait_until(lambda: not store.records())
    assert any("failed or dead" in r.getMessage() for r in caplog.records)
    hooks.close()


def test_a_duplicate_and_an_event_without_handlers_are_answered_in_the_request_thread() -> None:
    store = MemoryStore()
    hooks = hooks_on(store)  # the default reply deadline
    body = payload("gen_no_handler")
    assert post(hooks, body) == (200, "ignored")
    assert post(hooks, body) == (200, "duplicate")
    assert hooks._pool is None  # neither needed a runner thread
    ran_in: list[str] = []
    hooks.on("generation.succeeded")(lambda e: ran_in.append(threading.current_thread().name))
    other = payload("gen_with_handler")
    assert post(hooks, other) == (200, "processed")
    assert post(hooks, other) == (200, "duplicate")
    assert ran_in == ["gptimg-webhooks-run"]  # the handler ran once, behind the deadline
    hooks.close()


def test_a_handler_that_takes_the_delivery_gets_it_whole_and_a_failure_is_reported_with_it() -> (
    None
):
    store = MemoryStore()
    hooks = hooks_on(store)
    seen: list[Any] = []

    @hooks.on("generation.succeeded")
    def first(event: Event, delivery: Any) -> None:
        seen.append(delivery)

    @hooks.on("generation.succeeded")
    def second(event: Event) -> None:
        raise RuntimeError("broken")

    reported: list[Any] = []
    hooks.on_error(lambda exc, event, delivery: reported.append(delivery))
    body = payload("gen_delivery_whole")
    headers = request(body)
    assert hooks.handle("POST", headers, body).status == 500
    (delivery,) = seen
    assert delivery.id == headers["X-Gptimg-Delivery"]
    assert delivery.event == "generation.succeeded"
    assert delivery.key == store.records()[0].key
    assert delivery.attempt == 1
    assert abs(delivery.received_ts - time.time()) < 60
    assert [(d.id, d.key, d.attempt) for d in reported] == [
        (delivery.id, delivery.key, delivery.attempt)
    ]
    hooks.close()
