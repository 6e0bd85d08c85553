"""Deferred mode and its workers, on the memory and SQLite stores (fast, one process)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from gptimg_webhooks import Delivery, Event, Webhooks, sign
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks._core.runner import Backoff
from gptimg_webhooks.stores.memory import MemoryStore
from gptimg_webhooks.stores.sqlite import SQLiteStore
from gptimg_webhooks.worker import Outcome, Worker
from tests.support.concurrency import Peak, default_executor_threads
from tests.support.contract import payload

SECRET = "whsec_worker_tests_0123456789abcdef"


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_777_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def post(hooks: Webhooks, body: bytes, delivery: str | None = None) -> tuple[int, str]:
    headers = {
        "X-Gptimg-Signature": sign(body, SECRET),
        "X-Gptimg-Delivery": delivery or str(uuid.uuid4()),
        "X-Gptimg-Event": "generation.succeeded",
    }
    answer = hooks.handle("POST", headers, body)
    body_json = answer.json
    return answer.status, body_json.get("status") or body_json.get("error")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite"])
def hooks(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Webhooks:
    store = (
        MemoryStore(clock=clock)
        if request.param == "memory"
        else SQLiteStore(str(tmp_path / "l.db"), clock=clock)
    )
    return Webhooks(SECRET, store=store, mode="deferred", clock=clock, include_shared=False)


class Calls:
    """A handler that records its runs and fails the first ``failures`` of them."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.runs: list[tuple[str, int, str]] = []

    def __call__(self, event: Event, delivery: Delivery) -> None:
        self.runs.append((event.data.generation_id, delivery.attempt, delivery.id))  # type: ignore[attr-defined]
        if len(self.runs) <= self.failures:
            raise RuntimeError(f"planned failure {len(self.runs)}")


def drain(worker: Worker) -> list[Outcome]:
    outcomes: list[Outcome] = []
    worker.on_outcome = outcomes.append
    asyncio.run(worker.run(once=True))
    return outcomes


def only_record(hooks: Webhooks):  # type: ignore[no-untyped-def]
    records = hooks.store.records()
    assert len(records) == 1
    return records[0]


def test_deferred_answers_202_and_runs_nothing_until_a_worker_does(hooks: Webhooks) -> None:
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    delivery = str(uuid.uuid4())
    assert post(hooks, payload("gen_a"), delivery) == (202, "queued")
    assert calls.runs == []
    assert only_record(hooks).state is State.PENDING

    outcomes = drain(Worker(hooks))
    assert [o.status for o in outcomes] == ["processed"]
    assert calls.runs == [("gen_a", 1, delivery)]
    assert only_record(hooks).state is State.DONE
    # A retry and a forged-id replay after processing are duplicates: no second run.
    assert post(hooks, payload("gen_a"), delivery) == (200, "duplicate")
    assert post(hooks, payload("gen_a")) == (200, "duplicate")
    assert drain(Worker(hooks)) == []
    assert len(calls.runs) == 1


def test_duplicates_while_pending_are_queued_once(hooks: Webhooks) -> None:
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    body = payload("gen_dup")
    delivery = str(uuid.uuid4())
    answers = {post(hooks, body, delivery), post(hooks, body, delivery), post(hooks, body)}
    assert answers == {(202, "queued")}
    drain(Worker(hooks))
    assert [r[0] for r in calls.runs] == ["gen_dup"]


def test_failed_handler_is_retried_after_backoff(hooks: Webhooks, clock: Clock) -> None:
    calls = Calls(failures=1)
    hooks.on("generation.succeeded")(calls)
    post(hooks, payload("gen_flaky"))
    worker = Worker(hooks, backoff=Backoff(max_attempts=3, initial=30, factor=4))

    assert [o.status for o in drain(worker)] == ["handler_failed"]
    record = only_record(hooks)
    assert record.state is State.PENDING
    assert record.available_at == pytest.approx(clock.now + 30)
    assert record.error is not None
    assert "planned failure 1" in record.error

    clock.now += 29
    assert drain(worker) == []  # not due yet
    clock.now += 1
    assert [(o.attempt, o.status) for o in drain(worker)] == [(2, "processed")]
    assert [r[1] for r in calls.runs] == [1, 2]
    assert only_record(hooks).state is State.DONE


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(max_attempts=6, initial=10, factor=3, cap=200)
    assert [backoff.delay(n) for n in range(1, 7)] == [10, 30, 90, 200, 200, None]


def test_record_is_dead_after_max_attempts_and_replay_revives_it(
    hooks: Webhooks, clock: Clock
) -> None:
    calls = Calls(failures=2)
    hooks.on("generation.succeeded")(calls)
    body = payload("gen_doomed")
    post(hooks, body)
    worker = Worker(hooks, max_attempts=2, backoff=Backoff(initial=5))

    assert [o.status for o in drain(worker)] == ["handler_failed"]
    clock.now += 5
    assert [o.status for o in drain(worker)] == ["dead"]
    record = only_record(hooks)
    assert record.state is State.DEAD
    assert record.body == body  # kept for the replay
    clock.now += 10_000
    assert drain(worker) == []  # dead stays dead
    assert post(hooks, body) == (200, "dead")  # the provider's retries do not revive it

    assert hooks.replay(record.key) is True
    assert hooks.replay(record.key) is False  # already pending
    assert [(o.attempt, o.status) for o in drain(worker)] == [(3, "processed")]
    assert only_record(hooks).state is State.DONE
    assert len(calls.runs) == 3


def test_expired_lease_is_taken_over_by_another_worker(hooks: Webhooks, clock: Clock) -> None:
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    post(hooks, payload("gen_orphan"))
    # A worker leases the record and dies before settling it.
    [(_, lost)] = hooks.store.lease_due(lease=10, limit=5)

    worker = Worker(hooks, lease=10)
    assert drain(worker) == []  # the lease is live: nobody else runs it
    clock.now += 10
    assert [(o.attempt, o.status) for o in drain(worker)] == [(2, "processed")]
    assert calls.runs == [("gen_orphan", 2, calls.runs[0][2])]
    # The dead worker's token no longer settles anything.
    key = only_record(hooks).key
    assert hooks.store.complete(key, lost.token) is False
    assert only_record(hooks).state is State.DONE


def test_run_that_outlives_its_lease_cannot_mark_done(hooks: Webhooks, clock: Clock) -> None:
    takeovers: list[str] = []

    def overrun(event: Event) -> None:
        if takeovers:
            return
        clock.now += 60  # the handler "takes" a minute on a 10 s lease...
        # ...and meanwhile another worker takes the expired lease over.
        [(_, claim)] = hooks.store.lease_due(lease=10, limit=5)
        takeovers.append(claim.token)

    hooks.on("generation.succeeded")(overrun)
    post(hooks, payload("gen_overrun"))
    worker = Worker(hooks, lease=10, backoff=Backoff(initial=1))
    assert [o.status for o in drain(worker)] == ["lease_lost"]
    record = only_record(hooks)
    assert record.state is State.PROCESSING  # the second run still owns it
    assert hooks.store.complete(record.key, takeovers[0]) is True


def test_worker_processes_at_most_concurrency_at_once(tmp_path: Path) -> None:
    hooks = Webhooks(
        SECRET, store=SQLiteStore(str(tmp_path / "c.db")), mode="deferred", include_shared=False
    )
    peak = Peak()

    def handler(event: Event) -> None:
        with peak.inside():
            time.sleep(0.05)

    hooks.on("generation.succeeded")(handler)
    for i in range(12):
        post(hooks, payload(f"gen_c{i}"))
    outcomes = drain(Worker(hooks, concurrency=3, poll_interval=0.01))
    assert len(outcomes) == 12
    assert {o.status for o in outcomes} == {"processed"}
    assert 1 < peak.most <= 3


def test_worker_runs_as_many_sync_handlers_at_once_as_its_concurrency(tmp_path: Path) -> None:
    # More than asyncio's default executor holds: they must not queue behind each other.
    concurrency = default_executor_threads() + 2
    hooks = Webhooks(
        SECRET, store=SQLiteStore(str(tmp_path / "c.db")), mode="deferred", include_shared=False
    )
    together = threading.Barrier(concurrency, timeout=10)
    hooks.on("generation.succeeded")(lambda event: together.wait())
    for i in range(concurrency):
        post(hooks, payload(f"gen_t{i}"))
    outcomes = drain(Worker(hooks, concurrency=concurrency, poll_interval=0.01))
    assert [o.status for o in outcomes] == ["processed"] * concurrency
    hooks.close()


def test_stop_lets_the_running_handler_finish_and_leases_no_more(tmp_path: Path) -> None:
    hooks = Webhooks(
        SECRET, store=SQLiteStore(str(tmp_path / "s.db")), mode="deferred", include_shared=False
    )
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def handler(event: Event) -> None:
        started.set()
        release.wait(5)
        done.append(event.data.generation_id)  # type: ignore[attr-defined]

    hooks.on("generation.succeeded")(handler)
    post(hooks, payload("gen_running"))
    worker = Worker(hooks, concurrency=1, poll_interval=0.01)
    thread = worker.start_thread()
    assert started.wait(5)
    post(hooks, payload("gen_waiting"))
    worker.stop()
    time.sleep(0.1)
    assert thread.is_alive()  # still finishing the run under way
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert done == ["gen_running"]
    states = {r.generation_id: r.state for r in hooks.store.records()}
    assert states == {"gen_running": State.DONE, "gen_waiting": State.PENDING}


def test_lifespan_runs_a_background_worker_beside_the_app(tmp_path: Path) -> None:
    hooks = Webhooks(
        SECRET, store=SQLiteStore(str(tmp_path / "l.db")), mode="deferred", include_shared=False
    )
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(event.data.generation_id)  # type: ignore[attr-defined]

    hooks.on("generation.succeeded")(handler)
    worker = Worker(hooks, poll_interval=0.02)

    async def scenario() -> None:
        async with worker.lifespan(app=None):
            body = payload("gen_life")
            headers = {
                "X-Gptimg-Signature": sign(body, SECRET),
                "X-Gptimg-Delivery": str(uuid.uuid4()),
                "X-Gptimg-Event": "generation.succeeded",
            }
            answer = await hooks.handle_async("POST", headers, body)
            assert answer.status == 202
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen == ["gen_life"]
    assert hooks.store.records()[0].state is State.DONE


def test_inline_receiver_replay_is_processed_by_a_worker(tmp_path: Path) -> None:
    hooks = Webhooks(SECRET, store=SQLiteStore(str(tmp_path / "i.db")), include_shared=False)
    calls = Calls(failures=1)
    hooks.on("generation.succeeded")(calls)
    assert post(hooks, payload("gen_inline")) == (500, "handler_failed")
    record = hooks.store.records()[0]
    assert record.state is State.FAILED
    assert hooks.replay(record.key)
    assert [o.status for o in drain(Worker(hooks))] == ["processed"]
    assert hooks.store.records()[0].state is State.DONE


# Store outage ------------------------------------------------------------------------


@pytest.fixture
def locked_sqlite(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A SQLite ledger whose write lock another connection holds."""
    path = tmp_path / "locked.db"
    SQLiteStore(str(path)).records()  # create the schema
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield f"sqlite:///{path}"
    holder.execute("ROLLBACK")
    holder.close()


@pytest.mark.parametrize("mode", ["inline", "deferred"])
def test_store_outage_answers_503_with_retry_after_inside_the_timeout(
    locked_sqlite: str, mode: str
) -> None:
    hooks = Webhooks(SECRET, store=locked_sqlite, mode=mode, include_shared=False)  # type: ignore[arg-type]
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    body = payload("gen_outage")
    headers = {
        "X-Gptimg-Signature": sign(body, SECRET),
        "X-Gptimg-Delivery": str(uuid.uuid4()),
        "X-Gptimg-Event": "generation.succeeded",
    }
    started = time.monotonic()
    answer = hooks.handle("POST", headers, body)
    elapsed = time.monotonic() - started
    assert answer.status == 503
    assert int(dict(answer.headers)["retry-after"]) > 0
    assert elapsed < 4.0  # the provider gives up at 5 s
    assert calls.runs == []  # fail closed: no handler without dedup


def test_fail_open_runs_handlers_unrecorded_when_the_store_is_down(tmp_path: Path) -> None:
    # A directory where the database file should be: every store call fails at once.
    hooks = Webhooks(
        SECRET,
        store=f"sqlite:///{tmp_path}",
        on_store_error="fail_open",
        include_shared=False,
    )
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    body = payload("gen_open")
    assert post(hooks, body) == (200, "processed_unrecorded")
    assert post(hooks, body) == (200, "processed_unrecorded")  # no dedup: the trade-off
    assert len(calls.runs) == 2

    failing = Webhooks(
        SECRET, store=f"sqlite:///{tmp_path}", on_store_error="fail_open", include_shared=False
    )
    failing.on("generation.succeeded")(Calls(failures=1))
    assert post(failing, payload("gen_open_fail")) == (500, "handler_failed")


def test_fail_closed_is_the_default(tmp_path: Path) -> None:
    hooks = Webhooks(SECRET, store=f"sqlite:///{tmp_path}", include_shared=False)
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    assert post(hooks, payload("gen_closed")) == (503, "store_unavailable")
    assert calls.runs == []


def test_worker_waits_out_a_store_outage(tmp_path: Path) -> None:
    hooks = Webhooks(SECRET, store=f"sqlite:///{tmp_path}", include_shared=False)
    worker = Worker(hooks, poll_interval=0.01)
    with pytest.raises(Exception, match="SQLite ledger"):
        asyncio.run(worker.run(once=True))  # --once reports the outage

    async def bounded() -> int:
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.2)
        assert not task.done()  # the long-running loop keeps trying
        worker.stop()
        return await asyncio.wait_for(task, 2)

    assert asyncio.run(bounded()) == 0


def test_bad_worker_settings_fail_fast(hooks: Webhooks) -> None:
    from gptimg_webhooks import ConfigurationError

    with pytest.raises(ConfigurationError):
        Worker(hooks, concurrency=0)
    with pytest.raises(ConfigurationError):
        Worker(hooks, max_attempts=0)
    with pytest.raises(ConfigurationError):
        Worker(hooks, lease=0)
    with pytest.raises(ConfigurationError):
        Webhooks(SECRET, store=hooks.store, on_store_error="ignore")  # type: ignore[arg-type]


class CompleteOutage(MemoryStore):
    """A memory ledger whose first ``outages`` done marks meet an outage."""

    def __init__(self, outages: int) -> None:
        super().__init__()
        self.outages = outages

    def complete(self, key: str, token: str, *, counter: str = "") -> bool:
        if self.outages:
            self.outages -= 1
            from gptimg_webhooks import StoreUnavailable

            raise StoreUnavailable("ledger briefly unreachable")
        return super().complete(key, token, counter=counter)


def wait_for_state(hooks: Webhooks, state: State, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while only_record(hooks).state is not state:
        assert time.monotonic() < deadline, only_record(hooks)
        time.sleep(0.02)


def test_worker_lands_the_done_mark_after_a_short_outage_without_a_second_run() -> None:
    hooks = Webhooks(SECRET, store=CompleteOutage(2), mode="deferred", include_shared=False)
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    post(hooks, payload("gen_blip"))
    outcomes = drain(Worker(hooks, lease=30))
    assert [o.status for o in outcomes] == ["processed"]
    wait_for_state(hooks, State.DONE)  # the keeper retried the mark, holding the lease
    assert len(calls.runs) == 1  # the handler is not run again for the mark's sake
    hooks.close()


def test_inline_done_mark_outage_answers_processed_and_copies_never_run_again() -> None:
    hooks = Webhooks(SECRET, store=CompleteOutage(1), include_shared=False)
    calls = Calls()
    hooks.on("generation.succeeded")(calls)
    body = payload("gen_inline_blip")
    assert post(hooks, body) == (200, "processed")  # the handlers ran: their outcome is known
    copy = post(hooks, body)
    assert copy in ((409, "delivery_in_progress"), (200, "duplicate"))
    wait_for_state(hooks, State.DONE)
    assert post(hooks, body) == (200, "duplicate")
    assert len(calls.runs) == 1
    hooks.close()
