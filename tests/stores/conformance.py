"""The one ledger conformance suite every store passes.

To run it against a store, subclass :class:`StoreConformance` in a ``test_*.py`` module
and provide one fixture, ``reopen``: a zero-argument callable that opens a store
instance on this test's own namespace (a fresh file, key prefix, table...). Every call
must reach the same namespace, so two instances (or two processes) share records; a
one-process store (memory) returns its single instance. For example::

    class TestMyStore(StoreConformance, MultiProcessConformance, TransactionalConformance):
        @pytest.fixture
        def reopen(self, tmp_path):
            return lambda: MyStore(tmp_path / "ledger")

        @pytest.fixture
        def effects(self, store):
            return MyEffects(...)  # see Effects

Times come from the store's own clock (store-side time), so the tests that need a lease
to run out use short leases and wait for them (:data:`SHORT`).

Add the mixins that apply, so nothing is skipped (under ``CI=true`` a skip fails):
:class:`MultiProcessConformance` for stores shared across processes,
:class:`TransactionalConformance` for ``transactional`` stores (with an ``effects``
fixture that writes a table through ``delivery.transaction``), and
:class:`AsyncTransactionalConformance` when ``async_transactions`` is true. The
``store`` fixture is ``reopen()``, closed after the test.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

import pytest

from gptimg_webhooks._core.errors import TransactionAborted
from gptimg_webhooks._core.ledger import ClaimStatus, Entry, State, Store
from tests.support import forked

LEASE = 60.0
#: A lease short enough to wait out in a test.
SHORT = 0.4

Reopen = Callable[[], Store]


def traceparent() -> str:
    """A fresh W3C trace context, as a receiving span stamps it on its entry."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def entry(n: int | str = 1, *, body: bytes | None = None) -> Entry:
    """A distinct entry; its body includes a NUL and a non-UTF-8 byte to test bytes."""
    return Entry(
        key=f"k{n:0>4}" if isinstance(n, int) else n,
        delivery_id=f"0000000{n}-0000-4000-8000-000000000000",
        event="generation.succeeded",
        generation_id=f"gen_{n}",
        body=body if body is not None else b'{"n":"%s"}\x00\xff' % str(n).encode(),
    )


def run_async(store: Store, factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine on a fresh loop, then close the store's clients of that loop."""

    async def main() -> Any:
        try:
            return await factory()
        finally:
            await store.aclose()

    return asyncio.run(main())


# Races ------------------------------------------------------------------------------


def expire() -> None:
    """Wait until a lease of :data:`SHORT` seconds taken before the call has run out."""
    time.sleep(SHORT + 0.15)


def _claim_rounds(store: Store, keys: list[str], barrier: Any) -> list[tuple[str, ClaimStatus]]:
    out = []
    for key in keys:
        barrier.wait(timeout=30)  # everyone claims the same key at the same moment
        claim = store.claim(entry(key), lease=LEASE)
        out.append((key, claim.status))
    return out


def race_claims(
    reopen: Reopen, *, keys: int = 20, workers: int = 6, processes: bool = False
) -> dict[str, list[ClaimStatus]]:
    """Let ``workers`` claimers race for each of ``keys`` new keys; return their outcomes.

    Threads share nothing but the store's namespace (each opens its own instance);
    with ``processes`` each claimer is a forked process. Every round starts at a
    barrier, so all claimers hit the store together.
    """
    names = [f"race-{os.getpid()}-{i}" for i in range(keys)]
    results: dict[str, list[ClaimStatus]] = {k: [] for k in names}
    if not processes:
        barrier = threading.Barrier(workers)

        def work() -> list[tuple[str, ClaimStatus]]:
            store = reopen()
            try:
                return _claim_rounds(store, names, barrier)
            finally:
                store.close()

        with ThreadPoolExecutor(workers) as pool:
            for outcome in [pool.submit(work) for _ in range(workers)]:
                for key, status in outcome.result(timeout=60):
                    results[key].append(status)
        return results

    pbarrier = forked.context.Barrier(workers)

    def child() -> list[tuple[str, str]]:
        store = reopen()
        try:
            return [(k, s.value) for k, s in _claim_rounds(store, names, pbarrier)]
        finally:
            store.close()

    for outcome in forked.in_children([child] * workers):
        for key, status in outcome:
            results[key].append(ClaimStatus(status))
    return results


# Transactional stores ---------------------------------------------------------------


class Effects(Protocol):
    """A handler's own table, written through ``delivery.transaction``."""

    def write(self, tx: Any, value: str) -> None: ...

    async def awrite(self, tx: Any, value: str) -> None: ...

    def rows(self) -> list[str]: ...

    def break_transaction(self, tx: Any) -> None:
        """Run a failing statement through ``tx`` and catch the error, as a handler might."""


class StoreConformance:
    """Ledger semantics: see ``gptimg_webhooks._core.ledger`` for the machine."""

    @pytest.fixture
    def reopen(self) -> Reopen:
        raise NotImplementedError("a conformance subclass provides the `reopen` fixture")

    @pytest.fixture
    def store(self, reopen: Reopen) -> Iterator[Store]:
        store = reopen()
        yield store
        store.close()

    # Threads in one process share a store: for a one-process store, ``reopen`` returns
    # the same instance, and the thread tests below still test its locking.

    # Claim -------------------------------------------------------------------------

    def test_new_delivery_is_claimed_as_attempt_one_with_a_token(self, store: Store) -> None:
        claim = store.claim(entry(1), lease=LEASE)
        assert claim.status is ClaimStatus.CLAIMED
        assert claim.attempt == 1
        assert claim.token

    def test_claimed_record_keeps_the_entry_and_holds_a_lease_by_store_time(
        self, store: Store
    ) -> None:
        e = entry(1)
        before = time.time()
        store.claim(e, lease=LEASE)
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.key, rec.state, rec.attempts) == (e.key, State.PROCESSING, 1)
        assert (rec.delivery_id, rec.event, rec.generation_id) == (
            e.delivery_id,
            e.event,
            e.generation_id,
        )
        assert rec.body == e.body
        # The store's clock (the same host's here) stamps the record and the lease.
        assert rec.created_at == pytest.approx(before, abs=2)
        assert rec.lease_until == pytest.approx(rec.created_at + LEASE, abs=0.5)

    def test_unknown_key_is_none(self, store: Store) -> None:
        assert store.get("no-such-key") is None

    def test_entry_without_event_or_generation_round_trips_as_none(self, store: Store) -> None:
        e = Entry("k-none", "d", None, None, b"")
        store.claim(e, lease=LEASE)
        rec = store.get("k-none")
        assert rec is not None
        assert (rec.event, rec.generation_id, rec.body) == (None, None, b"")

    def test_duplicate_during_a_live_lease_is_in_progress(self, store: Store) -> None:
        store.claim(entry(1), lease=LEASE)
        again = store.claim(entry(1), lease=LEASE)
        assert again.status is ClaimStatus.IN_PROGRESS
        assert store.get(entry(1).key).attempts == 1  # type: ignore[union-attr]

    def test_duplicate_after_done_is_done_and_the_body_is_dropped(self, store: Store) -> None:
        claim = store.claim(entry(1), lease=SHORT)
        assert store.complete(entry(1).key, claim.token)
        rec = store.get(entry(1).key)
        assert rec is not None
        assert (rec.state, rec.body, rec.lease_until) == (State.DONE, None, None)
        expire()  # long after its lease would have ended, a done record stays done
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.DONE

    def test_known_done_never_says_done_of_a_record_that_is_not(self, store: Store) -> None:
        key = entry(1).key
        assert not store.known_done(key)
        claim = store.claim(entry(1), lease=LEASE)
        assert not store.known_done(key)
        assert store.fail(key, claim.token, "boom")
        assert not store.known_done(key)
        claim = store.claim(entry(1), lease=LEASE)
        assert store.complete(key, claim.token)
        assert store.replay(key) is False  # done stays done
        assert not store.known_done(entry(2).key)

    def test_complete_with_a_wrong_token_is_refused(self, store: Store) -> None:
        store.claim(entry(1), lease=LEASE)
        assert not store.complete(entry(1).key, "not-the-token")
        assert not store.complete(entry(1).key, "")
        assert not store.complete("no-such-key", "x")
        assert store.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]

    def test_expired_lease_is_reclaimed_with_the_next_attempt(self, store: Store) -> None:
        first = store.claim(entry(1), lease=SHORT)
        expire()
        second = store.claim(entry(1), lease=LEASE)
        assert second.status is ClaimStatus.CLAIMED
        assert second.attempt == 2
        assert second.token != first.token

    def test_an_old_token_cannot_settle_after_its_lease_was_taken_over(self, store: Store) -> None:
        first = store.claim(entry(1), lease=SHORT)
        expire()
        second = store.claim(entry(1), lease=LEASE)
        key = entry(1).key
        assert not store.complete(key, first.token)
        assert not store.fail(key, first.token, "late")
        assert not store.renew(key, first.token, lease=LEASE)
        assert store.get(key).state is State.PROCESSING  # type: ignore[union-attr]
        assert store.complete(key, second.token)
        assert not store.complete(key, second.token)  # only once

    # Renewed leases ----------------------------------------------------------------

    def test_renewed_lease_outlives_its_first_deadline(self, store: Store) -> None:
        claim = store.claim(entry(1), lease=SHORT)
        for _ in range(3):  # renewed well past the first lease's end
            time.sleep(SHORT / 2)
            assert store.renew(entry(1).key, claim.token, lease=SHORT)
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
        assert store.due(10) == []
        rec = store.get(entry(1).key)
        assert rec is not None
        assert rec.attempts == 1
        assert store.complete(entry(1).key, claim.token)

    def test_renew_keeps_the_token_and_refuses_strangers(self, store: Store) -> None:
        claim = store.claim(entry(1), lease=LEASE)
        assert not store.renew(entry(1).key, "other", lease=LEASE)
        assert not store.renew("no-such-key", claim.token, lease=LEASE)
        assert store.renew(entry(1).key, claim.token, lease=LEASE)
        assert store.complete(entry(1).key, claim.token)
        assert not store.renew(entry(1).key, claim.token, lease=LEASE)  # settled: nothing held

    def test_a_late_done_mark_lands_while_nobody_took_the_record_over(self, store: Store) -> None:
        # What the durable done mark stands on: the token, not the deadline, fences it.
        claim = store.claim(entry(1), lease=SHORT)
        expire()
        assert store.complete(entry(1).key, claim.token)
        assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]

    def test_an_unrenewed_lease_runs_out(self, store: Store) -> None:
        store.claim(entry(1), lease=SHORT)
        assert store.due(10) == []
        expire()
        assert store.due(10) == [entry(1).key]

    # Failure -----------------------------------------------------------------------

    def test_failed_record_keeps_body_and_error_and_is_claimed_again(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, lease=LEASE)
        assert store.fail(e.key, claim.token, "ValueError: boom")
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.body, rec.error, rec.lease_until) == (
            State.FAILED,
            e.body,
            "ValueError: boom",
            None,
        )
        retry = store.claim(e, lease=LEASE)
        assert (retry.status, retry.attempt) == (ClaimStatus.CLAIMED, 2)
        assert not store.complete(e.key, claim.token)  # the old token is spent
        assert store.complete(e.key, retry.token)
        assert store.get(e.key).error is None  # type: ignore[union-attr]

    def test_retry_is_pending_and_leasable_only_after_its_delay(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, lease=LEASE)
        assert store.retry(e.key, claim.token, "err", delay=SHORT)
        rec = store.get(e.key)
        assert rec is not None
        assert rec.state is State.PENDING
        assert rec.available_at == pytest.approx(rec.updated_at + SHORT, abs=0.05)
        # A provider retry meanwhile must not run it inline: it is queued.
        assert store.claim(e, lease=LEASE).status is ClaimStatus.PENDING
        assert store.lease_due(lease=LEASE) == []
        expire()
        leased = store.lease_due(lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(e.key, 2)]
        assert leased[0][0].available_at is None
        assert leased[0][0].body == e.body
        assert store.complete(e.key, leased[0][1].token)

    def test_buried_record_is_dead_to_claims_and_to_runners(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, lease=LEASE)
        assert store.bury(e.key, claim.token, "gave up")
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.body, rec.error) == (State.DEAD, e.body, "gave up")
        assert store.claim(e, lease=LEASE).status is ClaimStatus.DEAD
        assert store.enqueue(e).status is ClaimStatus.DEAD
        assert store.lease_due(lease=LEASE) == []

    # Replay and rerun --------------------------------------------------------------

    def test_replay_puts_failed_and_dead_records_back_to_pending(self, store: Store) -> None:
        for n, settle in ((1, store.fail), (2, store.bury)):
            claim = store.claim(entry(n), lease=LEASE)
            settle(entry(n).key, claim.token, "err")
            assert store.replay(entry(n).key)
            rec = store.get(entry(n).key)
            assert rec is not None
            assert (rec.state, rec.available_at, rec.body) == (State.PENDING, None, entry(n).body)
        leased = store.lease_due(lease=LEASE)
        assert sorted(r.key for r, _ in leased) == [entry(1).key, entry(2).key]
        assert all(c.attempt == 2 for _, c in leased)

    def test_replay_refuses_done_processing_pending_and_unknown(self, store: Store) -> None:
        done = store.claim(entry(1), lease=LEASE)
        store.complete(entry(1).key, done.token)
        store.claim(entry(2), lease=LEASE)
        store.enqueue(entry(3))
        for key in (entry(1).key, entry(2).key, entry(3).key, "no-such-key"):
            assert not store.replay(key)
            assert store.rerun(key, lease=LEASE) is None
        states = [store.get(entry(n).key).state for n in (1, 2, 3)]  # type: ignore[union-attr]
        assert states == [State.DONE, State.PROCESSING, State.PENDING]

    def test_rerun_leases_a_failed_or_dead_record_at_once(self, store: Store) -> None:
        for n, settle in ((1, store.fail), (2, store.bury)):
            claim = store.claim(entry(n), lease=LEASE)
            settle(entry(n).key, claim.token, "err")
            leased = store.rerun(entry(n).key, lease=LEASE)
            assert leased is not None
            rec, again = leased
            assert (rec.state, rec.body, again.attempt) == (State.PROCESSING, entry(n).body, 2)
            assert store.claim(entry(n), lease=LEASE).status is ClaimStatus.IN_PROGRESS
            assert store.complete(entry(n).key, again.token)

    # Deferred mode and runners -----------------------------------------------------

    def test_enqueue_records_pending_without_a_lease(self, store: Store) -> None:
        e = entry(1)
        claim = store.enqueue(e)
        assert (claim.status, claim.token) == (ClaimStatus.PENDING, "")
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.attempts, rec.body, rec.lease_until) == (
            State.PENDING,
            0,
            e.body,
            None,
        )
        assert store.enqueue(e).status is ClaimStatus.PENDING
        assert store.get(e.key).attempts == 0  # type: ignore[union-attr]

    def test_enqueued_duplicate_of_a_failed_record_requeues_it(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, lease=LEASE)
        store.fail(e.key, claim.token, "err")
        assert store.enqueue(e).status is ClaimStatus.PENDING
        assert store.get(e.key).state is State.PENDING  # type: ignore[union-attr]
        leased = store.lease_due(lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(e.key, 2)]

    def test_enqueued_duplicate_of_done_or_running_is_reported(self, store: Store) -> None:
        claim = store.claim(entry(1), lease=LEASE)
        assert store.enqueue(entry(1)).status is ClaimStatus.IN_PROGRESS
        store.complete(entry(1).key, claim.token)
        assert store.enqueue(entry(1)).status is ClaimStatus.DONE

    def test_lease_due_leases_each_pending_record_once(self, store: Store) -> None:
        for n in range(3):
            store.enqueue(entry(n))
        leased = store.lease_due(lease=LEASE)
        assert sorted(r.key for r, _ in leased) == [entry(n).key for n in range(3)]
        for rec, claim in leased:
            assert (rec.state, rec.attempts, claim.status) == (
                State.PROCESSING,
                1,
                ClaimStatus.CLAIMED,
            )
            assert rec.body == entry(int(rec.key[1:])).body
        assert len({c.token for _, c in leased}) == 3
        assert store.lease_due(lease=LEASE) == []
        # A leased record's duplicate is in progress, and its token settles it.
        assert store.claim(entry(0), lease=LEASE).status is ClaimStatus.IN_PROGRESS
        rec, claim = leased[0]
        assert store.complete(rec.key, claim.token)

    def test_the_first_arrivals_traceparent_is_kept_and_reaches_every_runner(
        self, store: Store
    ) -> None:
        # A deferred run's span links to the receiving span through this field.
        stamped = [replace(entry(n), traceparent=traceparent()) for n in range(4)]
        for e in stamped:
            store.enqueue(e)
            store.enqueue(replace(e, traceparent=traceparent()))  # a duplicate's
        assert [store.get(e.key).traceparent for e in stamped] == [  # type: ignore[union-attr]
            e.traceparent for e in stamped
        ]
        one = store.lease_one(stamped[0].key, lease=LEASE)
        assert one is not None and one[0].traceparent == stamped[0].traceparent
        other = run_async(store, lambda: store.alease_one(stamped[1].key, lease=LEASE))
        assert other is not None and other[0].traceparent == stamped[1].traceparent
        due = {r.key: r.traceparent for r, _ in store.lease_due(lease=LEASE, limit=10)}
        assert due == {e.key: e.traceparent for e in stamped[2:]}
        # A failed record queued again by a later copy keeps the first span's context.
        store.fail(stamped[0].key, one[1].token, "err")
        store.enqueue(replace(stamped[0], traceparent=traceparent()))
        again = store.lease_one(stamped[0].key, lease=LEASE)
        assert again is not None and again[0].traceparent == stamped[0].traceparent
        # Inline claims keep it too; an entry without one reads back as None.
        inline = replace(entry(9), traceparent=traceparent())
        store.claim(inline, lease=LEASE)
        assert store.get(inline.key).traceparent == inline.traceparent  # type: ignore[union-attr]
        store.claim(entry(10), lease=LEASE)
        assert store.get(entry(10).key).traceparent is None  # type: ignore[union-attr]

    def test_lease_due_respects_the_limit(self, store: Store) -> None:
        for n in range(5):
            store.enqueue(entry(n))
        first = store.lease_due(lease=LEASE, limit=2)
        second = store.lease_due(lease=LEASE, limit=10)
        assert len(first) == 2
        assert len(second) == 3
        assert not {r.key for r, _ in first} & {r.key for r, _ in second}

    def test_lease_due_takes_over_abandoned_leases(self, store: Store) -> None:
        inline = store.claim(entry(1), lease=SHORT)  # a process died holding it
        assert store.lease_due(lease=LEASE) == []
        expire()
        leased = store.lease_due(lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(entry(1).key, 2)]
        assert leased[0][0].body == entry(1).body
        assert not store.complete(entry(1).key, inline.token)
        assert store.complete(entry(1).key, leased[0][1].token)

    def test_concurrent_leasers_never_get_the_same_record(
        self, store: Store, reopen: Reopen
    ) -> None:
        for n in range(40):
            store.enqueue(entry(n))
        barrier = threading.Barrier(4)

        def lease() -> list[str]:
            mine, other = [], reopen()
            try:
                barrier.wait(timeout=30)
                for _ in range(100):
                    batch = other.lease_due(lease=LEASE, limit=3)
                    if not batch and not other.due(3):
                        break
                    mine += [r.key for r, _ in batch]
            finally:
                other.close()
            return mine

        with ThreadPoolExecutor(4) as pool:
            got = [k for f in [pool.submit(lease) for _ in range(4)] for k in f.result()]
        assert sorted(got) == sorted(entry(n).key for n in range(40))  # each exactly once

    # Retention ---------------------------------------------------------------------

    def test_prune_deletes_only_done_records_older_than_the_cutoff_by_default(
        self, store: Store
    ) -> None:
        def settle(n: int, how: str) -> None:
            claim = store.claim(entry(n), lease=LEASE)
            if how == "done":
                store.complete(entry(n).key, claim.token)
            elif how == "failed":
                store.fail(entry(n).key, claim.token, "e")
            elif how == "dead":
                store.bury(entry(n).key, claim.token, "e")

        settle(1, "done")
        settle(2, "failed")
        settle(3, "dead")
        settle(4, "processing")  # old but unfinished: kept
        store.enqueue(entry(5))  # old pending: kept
        time.sleep(0.3)
        settle(6, "done")  # finished but recent: kept
        assert store.prune(0.15) == 1
        assert store.get(entry(1).key) is None
        assert all(store.get(entry(n).key) is not None for n in (2, 3, 4, 5, 6))
        assert store.prune(0.15) == 0
        # Failed and dead records go only when asked for by name.
        assert store.prune(0.15, (State.FAILED, State.DEAD)) == 2
        assert store.get(entry(2).key) is None
        assert store.get(entry(3).key) is None
        assert store.get(entry(6).key) is not None
        # A pruned delivery is new again: retention bounds how long replays are caught.
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED

    def test_records_lists_newest_first_and_filters_by_state(self, store: Store) -> None:
        claims = {}
        for n in range(4):
            claims[n] = store.claim(entry(n), lease=LEASE)
            time.sleep(0.01)
        for n in (1, 3):
            store.complete(entry(n).key, claims[n].token)
            time.sleep(0.01)
        assert [r.key for r in store.records()] == [entry(n).key for n in (3, 1, 2, 0)]
        assert [r.key for r in store.records(State.DONE)] == [entry(3).key, entry(1).key]
        assert [r.key for r in store.records(State.PROCESSING, limit=1)] == [entry(2).key]
        assert store.records(State.DEAD) == []

    # Counters (the endpoint guard) -------------------------------------------------

    def test_bump_trips_at_the_limit_then_starts_again(self, store: Store) -> None:
        assert [store.bump("g", 3) for _ in range(6)] == [False, False, True] * 2

    def test_bump_adds_several_at_once(self, store: Store) -> None:
        assert not store.bump("g", 5, by=3)
        assert store.bump("g", 5, by=2)
        assert not store.bump("g", 5)

    def test_counters_are_separate_by_name(self, store: Store) -> None:
        assert not store.bump("a", 2)
        assert not store.bump("b", 2)
        assert store.bump("a", 2)

    def test_complete_ends_the_streak_of_its_counter_only(self, store: Store) -> None:
        store.bump("mine", 3)
        store.bump("mine", 3)
        store.bump("theirs", 3)
        store.bump("theirs", 3)
        claim = store.claim(entry(1), lease=LEASE)
        assert store.complete(entry(1).key, claim.token, counter="mine")
        assert [store.bump("mine", 3) for _ in range(3)] == [False, False, True]
        assert store.bump("theirs", 3)

    def test_counter_is_shared_by_every_instance(self, store: Store, reopen: Reopen) -> None:
        others = [reopen() for _ in range(3)]
        try:
            trips = [others[i % 3].bump("g", 6) for i in range(12)]
        finally:
            for other in others:
                other.close()
        assert trips == ([False] * 5 + [True]) * 2

    def test_concurrent_bumps_trip_exactly_once_per_limit(
        self, store: Store, reopen: Reopen
    ) -> None:
        barrier = threading.Barrier(4)

        def bump_many() -> int:
            other = reopen()
            try:
                barrier.wait(timeout=30)
                return sum(other.bump("g", 10) for _ in range(10))
            finally:
                other.close()

        with ThreadPoolExecutor(4) as pool:
            trips = sum(f.result() for f in [pool.submit(bump_many) for _ in range(4)])
        assert trips == 4  # 40 bumps, a trip at every 10th: the count is atomic

    # Concurrency -------------------------------------------------------------------

    def test_racing_claimers_in_threads_get_exactly_one_claim(
        self, store: Store, reopen: Reopen
    ) -> None:
        for key, statuses in race_claims(reopen, keys=10, workers=6).items():
            assert statuses.count(ClaimStatus.CLAIMED) == 1, (key, statuses)
            assert statuses.count(ClaimStatus.IN_PROGRESS) == 5, (key, statuses)

    # Async variants ----------------------------------------------------------------

    def test_async_methods_follow_the_same_lifecycle(self, store: Store) -> None:
        async def lifecycle() -> None:
            e, f = entry(1), entry(2)
            claim = await store.aclaim(e, lease=LEASE)
            assert (claim.status, claim.attempt) == (ClaimStatus.CLAIMED, 1)
            dup = await store.aclaim(e, lease=LEASE)
            assert dup.status is ClaimStatus.IN_PROGRESS
            assert await store.arenew(e.key, claim.token, lease=LEASE)
            assert not await store.acomplete(e.key, "wrong")
            assert await store.afail(e.key, claim.token, "boom")
            again = await store.aclaim(e, lease=LEASE)
            assert again.attempt == 2
            assert await store.acomplete(e.key, again.token)
            assert (await store.aclaim(e, lease=LEASE)).status is ClaimStatus.DONE

            assert (await store.aenqueue(f)).status is ClaimStatus.PENDING
            leased = await store.alease_due(lease=LEASE)
            assert [r.key for r, _ in leased] == [f.key]
            token = leased[0][1].token
            assert await store.aretry(f.key, token, "again", delay=SHORT)
            assert await store.alease_due(lease=LEASE) == []
            await asyncio.sleep(SHORT + 0.15)
            leased = await store.alease_due(lease=LEASE)
            assert len(leased) == 1
            assert not await store.abury(f.key, token, "stale token")
            assert await store.abury(f.key, leased[0][1].token, "dead")

            assert [await store.abump("g", 2) for _ in range(2)] == [False, True]
            assert await store.aprune(0) == 1  # e is done; f is dead

        run_async(store, lifecycle)
        assert store.get(entry(1).key) is None
        assert store.get(entry(2).key).state is State.DEAD  # type: ignore[union-attr]

    def test_async_claims_race_to_exactly_one_claim(self, store: Store) -> None:
        async def race() -> list[list[ClaimStatus]]:
            rounds = []
            for n in range(10):
                claims = [store.aclaim(entry(n), lease=LEASE) for _ in range(8)]
                rounds.append([c.status for c in await asyncio.gather(*claims)])
            return rounds

        for statuses in run_async(store, race):
            assert statuses.count(ClaimStatus.CLAIMED) == 1, statuses
            assert statuses.count(ClaimStatus.IN_PROGRESS) == 7, statuses


class MultiProcessConformance:
    """For stores shared across processes: forked claimers race; forks reuse a store."""

    @pytest.mark.slow
    def test_racing_claimers_in_processes_get_exactly_one_claim(
        self, store: Store, reopen: Reopen
    ) -> None:
        for key, statuses in race_claims(reopen, keys=10, workers=6, processes=True).items():
            assert statuses.count(ClaimStatus.CLAIMED) == 1, (key, statuses)

    @pytest.mark.slow
    def test_leasing_processes_never_get_the_same_record(
        self, store: Store, reopen: Reopen
    ) -> None:
        for n in range(60):
            store.enqueue(entry(n))
        barrier = forked.context.Barrier(3)

        def worker() -> list[str]:
            mine: list[str] = []
            other = reopen()
            try:
                barrier.wait(timeout=30)
                for _ in range(200):
                    batch = other.lease_due(lease=LEASE, limit=4)
                    if not batch and not other.due(4):
                        break
                    mine += [r.key for r, _ in batch]
                return mine
            finally:
                other.close()

        got = forked.in_children([worker] * 3)
        assert sorted(k for keys in got for k in keys) == sorted(entry(n).key for n in range(60))

    @pytest.mark.slow
    def test_a_lease_renewed_by_one_process_holds_against_another(
        self, store: Store, reopen: Reopen
    ) -> None:
        claim = store.claim(entry(1), lease=SHORT)

        def rival() -> list[str]:
            other = reopen()
            try:
                seen = []
                for _ in range(4):
                    time.sleep(SHORT / 2)
                    seen.append(other.claim(entry(1), lease=LEASE).status.value)
                return seen
            finally:
                other.close()

        child = forked.Children([rival])
        for _ in range(8):
            time.sleep(SHORT / 4)
            assert store.renew(entry(1).key, claim.token, lease=SHORT)
        [seen] = child.results()
        assert seen == ["in_progress"] * 4
        assert store.complete(entry(1).key, claim.token)

    @pytest.mark.slow
    def test_a_forked_child_uses_a_store_its_parent_had_opened(
        self, store: Store, reopen: Reopen
    ) -> None:
        claim = store.claim(entry(1), lease=LEASE)  # the parent's connections are live

        def child() -> tuple[bool, str]:
            done = store.complete(entry(1).key, claim.token)
            return done, store.claim(entry(2), lease=LEASE).status.value

        [result] = forked.in_children([child])
        assert result == (True, "claimed")
        # The parent's own connections survived the child's exit.
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.DONE
        assert store.claim(entry(2), lease=LEASE).status is ClaimStatus.IN_PROGRESS


class ServerTimeConformance:
    """For stores whose clock is the server's (``server_time = True``)."""

    def test_store_says_it_keeps_server_time(self, store: Store) -> None:
        assert store.server_time

    def test_a_host_clock_far_behind_changes_nothing(
        self, store: Store, reopen: Reopen, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A live lease (long, so a loaded machine cannot let it run out mid-test) and one
        # that runs out by the server's clock while the test watches.
        live = store.claim(entry(2), lease=LEASE)
        honest = store.claim(entry(1), lease=SHORT)
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 200)
        skewed = reopen()
        try:
            assert skewed.claim(entry(2), lease=LEASE).status is ClaimStatus.IN_PROGRESS
            assert entry(2).key not in skewed.due(10)
            real_sleep = SHORT + 0.15
            monkeypatch.undo()
            time.sleep(real_sleep)
            monkeypatch.setattr(time, "time", lambda: real() - 200)
            # By the server's clock the short lease ran out, whatever this host believes.
            assert skewed.due(10) == [entry(1).key]
            took = skewed.claim(entry(1), lease=LEASE)
            assert (took.status, took.attempt) == (ClaimStatus.CLAIMED, 2)
            assert not skewed.complete(entry(1).key, honest.token)
            assert store.complete(entry(2).key, live.token)  # the live one stayed its owner's
        finally:
            skewed.close()


class TransactionalConformance:
    """For transactional stores: needs an ``effects`` fixture (an :class:`Effects`)."""

    #: True on a database with one writer at a time (SQLite): while a handler's writes
    #: hold its write lock no other connection writes, so no renewal can either.
    single_writer = False

    def test_handler_write_and_done_mark_commit_together(
        self, store: Store, effects: Effects
    ) -> None:
        claim = store.claim(entry(1), lease=LEASE)
        with store.transaction() as tx:
            effects.write(tx, "one")
            assert store.complete(entry(1).key, claim.token)
            # Not visible outside the transaction yet: the done mark waits for commit.
            assert effects.rows() == []
        assert effects.rows() == ["one"]
        assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]

    def test_handler_error_rolls_back_its_write_and_the_done_mark(
        self, store: Store, effects: Effects
    ) -> None:
        claim = store.claim(entry(1), lease=LEASE)

        def handler_then_error() -> None:
            with store.transaction() as tx:
                effects.write(tx, "lost")
                assert store.complete(entry(1).key, claim.token)
                raise RuntimeError("handler broke")

        with pytest.raises(RuntimeError, match="handler broke"):
            handler_then_error()
        assert effects.rows() == []
        rec = store.get(entry(1).key)
        assert rec is not None
        assert rec.state is State.PROCESSING  # still leased: fail() settles it next
        assert store.fail(entry(1).key, claim.token, "RuntimeError")

    def test_lost_lease_inside_the_transaction_rolls_the_write_back(
        self, store: Store, effects: Effects
    ) -> None:
        stale = store.claim(entry(1), lease=SHORT)
        expire()
        store.claim(entry(1), lease=LEASE)  # another copy took over

        def late_handler() -> None:
            with store.transaction() as tx:
                effects.write(tx, "duplicate effect")
                if not store.complete(entry(1).key, stale.token):
                    raise LookupError("lease lost")  # what the receiver does (LeaseLost)

        with pytest.raises(LookupError):
            late_handler()
        assert effects.rows() == []

    def test_renewal_from_another_thread_while_the_transaction_is_open(
        self, store: Store, effects: Effects, reopen: Reopen
    ) -> None:
        key = entry(1).key
        claim = store.claim(entry(1), lease=SHORT)
        renewer, rival = reopen(), reopen()
        # Outside the transaction: leaving the pool waits for its calls, and the rival's
        # claim below waits for the commit.
        pool = ThreadPoolExecutor(1)
        try:
            with store.transaction() as tx:
                if not self.single_writer:
                    effects.write(tx, "slow")
                for _ in range(3):  # the handler outlives its first lease
                    time.sleep(SHORT / 2)
                    renewal = pool.submit(renewer.renew, key, claim.token, lease=SHORT)
                    assert renewal.result(timeout=10)
                if self.single_writer:
                    # The handler's first write takes the database's one write lock: from
                    # then on every other writer waits for the commit, a renewal as much
                    # as a rival taking the lease over once it ran out.
                    effects.write(tx, "slow")
                    expire()
                    taken = pool.submit(rival.claim, entry(1), lease=LEASE)
                    time.sleep(SHORT / 2)
                    assert not taken.done()
                assert store.complete(key, claim.token)
            if self.single_writer:
                assert taken.result(timeout=10).status is ClaimStatus.DONE
        finally:
            pool.shutdown()
            renewer.close()
            rival.close()
        assert effects.rows() == ["slow"]

    def test_check_transaction_blames_the_handler_for_its_own_sql_error(
        self, store: Store, effects: Effects
    ) -> None:
        claim = store.claim(entry(1), lease=LEASE)

        def handler_then_check() -> None:
            with store.transaction() as tx:
                effects.write(tx, "lost")
                effects.break_transaction(tx)  # a handler that caught its own SQL error
                store.check_transaction(tx)

        # TransactionAborted is a handler failure (HandlerFailed), never StoreUnavailable.
        with pytest.raises(TransactionAborted):
            handler_then_check()
        assert effects.rows() == []
        assert store.fail(entry(1).key, claim.token, "TransactionAborted")


class AsyncTransactionalConformance:
    """For stores with native ``atransaction`` (``async_transactions = True``)."""

    def test_async_transaction_commits_and_rolls_back_with_the_done_mark(
        self, store: Store, effects: Effects
    ) -> None:
        async def both() -> None:
            ok = await store.aclaim(entry(1), lease=LEASE)
            async with store.atransaction() as tx:
                await effects.awrite(tx, "kept")
                assert await store.acomplete(entry(1).key, ok.token)
            bad = await store.aclaim(entry(2), lease=LEASE)

            async def handler_then_error() -> None:
                async with store.atransaction() as tx:
                    await effects.awrite(tx, "dropped")
                    assert await store.acomplete(entry(2).key, bad.token)
                    raise RuntimeError("handler broke")

            with pytest.raises(RuntimeError, match="handler broke"):
                await handler_then_error()

        run_async(store, both)
        assert effects.rows() == ["kept"]
        assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]
        assert store.get(entry(2).key).state is State.PROCESSING  # type: ignore[union-attr]
