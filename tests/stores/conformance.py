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

Add the mixins that apply, so nothing is skipped (under ``CI=true`` a skip fails):
:class:`MultiProcessConformance` for stores shared across processes,
:class:`TransactionalConformance` for ``transactional`` stores (with an ``effects``
fixture that writes a table through ``delivery.transaction``), and
:class:`AsyncTransactionalConformance` when ``async_transactions`` is true. The
``store`` fixture is ``reopen()``, closed after the test. Times are passed explicitly
(``now=``), so no test sleeps.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import pytest

from gptimg_webhooks._core.ledger import ClaimStatus, Entry, State, Store

T0 = 1_800_000_000.0
LEASE = 60.0

Reopen = Callable[[], Store]


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


def _claim_rounds(
    store: Store, keys: list[str], barrier: Any, now: float
) -> list[tuple[str, ClaimStatus]]:
    out = []
    for key in keys:
        barrier.wait(timeout=30)  # everyone claims the same key at the same moment
        claim = store.claim(entry(key), now=now, lease=LEASE)
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
                return _claim_rounds(store, names, barrier, T0)
            finally:
                store.close()

        with ThreadPoolExecutor(workers) as pool:
            for outcome in [pool.submit(work) for _ in range(workers)]:
                for key, status in outcome.result(timeout=60):
                    results[key].append(status)
        return results

    ctx = multiprocessing.get_context("fork")
    pbarrier = ctx.Barrier(workers)
    queue = ctx.SimpleQueue()

    def child() -> None:
        store = reopen()
        try:
            queue.put(("ok", [(k, s.value) for k, s in _claim_rounds(store, names, pbarrier, T0)]))
        except BaseException as exc:
            queue.put(("error", repr(exc)))
        finally:
            store.close()

    procs = [ctx.Process(target=child) for _ in range(workers)]
    for p in procs:
        p.start()
    outcomes = [queue.get() for _ in procs]
    for p in procs:
        p.join(timeout=30)
    for kind, payload in outcomes:
        assert kind == "ok", payload
        for key, status in payload:
            results[key].append(ClaimStatus(status))
    return results


# Transactional stores ---------------------------------------------------------------


class Effects(Protocol):
    """A handler's own table, written through ``delivery.transaction``."""

    def write(self, tx: Any, value: str) -> None: ...

    async def awrite(self, tx: Any, value: str) -> None: ...

    def rows(self) -> list[str]: ...


class StoreConformance:
    """Ledger semantics: see ``gptimg_webhooks._core.ledger`` for the contract."""

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
        claim = store.claim(entry(1), now=T0, lease=LEASE)
        assert claim.status is ClaimStatus.CLAIMED
        assert claim.attempt == 1
        assert claim.token

    def test_claimed_record_keeps_the_entry_and_holds_a_lease(self, store: Store) -> None:
        e = entry(1)
        store.claim(e, now=T0, lease=LEASE)
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.key, rec.state, rec.attempts) == (e.key, State.PROCESSING, 1)
        assert (rec.delivery_id, rec.event, rec.generation_id) == (
            e.delivery_id,
            e.event,
            e.generation_id,
        )
        assert rec.body == e.body
        assert rec.lease_until == pytest.approx(T0 + LEASE)
        assert rec.created_at == pytest.approx(T0)

    def test_unknown_key_is_none(self, store: Store) -> None:
        assert store.get("no-such-key") is None

    def test_entry_without_event_or_generation_round_trips_as_none(self, store: Store) -> None:
        e = Entry("k-none", "d", None, None, b"")
        store.claim(e, now=T0, lease=LEASE)
        rec = store.get("k-none")
        assert rec is not None
        assert (rec.event, rec.generation_id, rec.body) == (None, None, b"")

    def test_duplicate_during_a_live_lease_is_in_progress(self, store: Store) -> None:
        store.claim(entry(1), now=T0, lease=LEASE)
        again = store.claim(entry(1), now=T0 + LEASE - 1, lease=LEASE)
        assert again.status is ClaimStatus.IN_PROGRESS
        assert store.get(entry(1).key).attempts == 1  # type: ignore[union-attr]

    def test_duplicate_after_done_is_done_and_the_body_is_dropped(self, store: Store) -> None:
        claim = store.claim(entry(1), now=T0, lease=LEASE)
        assert store.complete(entry(1).key, claim.token, now=T0 + 1)
        rec = store.get(entry(1).key)
        assert rec is not None
        assert (rec.state, rec.body, rec.lease_until) == (State.DONE, None, None)
        assert rec.updated_at == pytest.approx(T0 + 1)
        # Even long after its lease would have ended, a done record stays done.
        later = store.claim(entry(1), now=T0 + 10 * LEASE, lease=LEASE)
        assert later.status is ClaimStatus.DONE

    def test_complete_with_a_wrong_token_is_refused(self, store: Store) -> None:
        store.claim(entry(1), now=T0, lease=LEASE)
        assert not store.complete(entry(1).key, "not-the-token", now=T0 + 1)
        assert not store.complete("no-such-key", "x", now=T0 + 1)
        assert store.get(entry(1).key).state is State.PROCESSING  # type: ignore[union-attr]

    def test_expired_lease_is_reclaimed_with_the_next_attempt(self, store: Store) -> None:
        first = store.claim(entry(1), now=T0, lease=LEASE)
        second = store.claim(entry(1), now=T0 + LEASE, lease=LEASE)
        assert second.status is ClaimStatus.CLAIMED
        assert second.attempt == 2
        assert second.token != first.token
        assert store.get(entry(1).key).lease_until == pytest.approx(T0 + 2 * LEASE)  # type: ignore[union-attr]

    def test_an_old_token_cannot_settle_after_its_lease_was_taken_over(self, store: Store) -> None:
        first = store.claim(entry(1), now=T0, lease=LEASE)
        second = store.claim(entry(1), now=T0 + LEASE + 1, lease=LEASE)
        key = entry(1).key
        assert not store.complete(key, first.token, now=T0 + LEASE + 2)
        assert not store.fail(key, first.token, "late", now=T0 + LEASE + 2)
        assert store.get(key).state is State.PROCESSING  # type: ignore[union-attr]
        assert store.complete(key, second.token, now=T0 + LEASE + 3)
        assert not store.complete(key, second.token, now=T0 + LEASE + 4)  # only once

    # Failure -----------------------------------------------------------------------

    def test_failed_record_keeps_body_and_error_and_is_claimed_again(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, now=T0, lease=LEASE)
        assert store.fail(e.key, claim.token, "ValueError: boom", now=T0 + 1)
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.body, rec.error, rec.lease_until) == (
            State.FAILED,
            e.body,
            "ValueError: boom",
            None,
        )
        retry = store.claim(e, now=T0 + 2, lease=LEASE)
        assert (retry.status, retry.attempt) == (ClaimStatus.CLAIMED, 2)
        assert not store.complete(e.key, claim.token, now=T0 + 3)  # the old token is spent
        assert store.complete(e.key, retry.token, now=T0 + 3)
        assert store.get(e.key).error is None  # type: ignore[union-attr]

    def test_fail_with_retry_at_is_pending_and_leasable_only_from_then(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, now=T0, lease=LEASE)
        assert store.fail(e.key, claim.token, "err", now=T0 + 1, retry_at=T0 + 30)
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.available_at) == (State.PENDING, pytest.approx(T0 + 30))
        # A provider retry meanwhile must not run it inline: it is queued.
        assert store.claim(e, now=T0 + 2, lease=LEASE).status is ClaimStatus.PENDING
        assert store.lease_pending(now=T0 + 29, lease=LEASE) == []
        leased = store.lease_pending(now=T0 + 30, lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(e.key, 2)]
        assert leased[0][0].available_at is None
        assert store.complete(e.key, leased[0][1].token, now=T0 + 31)

    def test_dead_record_is_dead_to_claims_and_to_workers(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, now=T0, lease=LEASE)
        assert store.fail(e.key, claim.token, "gave up", now=T0 + 1, dead=True)
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.body, rec.error) == (State.DEAD, e.body, "gave up")
        assert store.claim(e, now=T0 + 2, lease=LEASE).status is ClaimStatus.DEAD
        assert store.lease_pending(now=T0 + 10 * LEASE, lease=LEASE) == []

    # Replay ------------------------------------------------------------------------

    def test_replay_puts_failed_and_dead_records_back_to_pending(self, store: Store) -> None:
        for n, dead in ((1, False), (2, True)):
            claim = store.claim(entry(n), now=T0, lease=LEASE)
            store.fail(entry(n).key, claim.token, "err", now=T0 + 1, dead=dead)
            assert store.replay(entry(n).key, now=T0 + 5)
            rec = store.get(entry(n).key)
            assert rec is not None
            assert (rec.state, rec.available_at, rec.body) == (State.PENDING, None, entry(n).body)
            assert rec.updated_at == pytest.approx(T0 + 5)
        leased = store.lease_pending(now=T0 + 5, lease=LEASE)
        assert sorted(r.key for r, _ in leased) == [entry(1).key, entry(2).key]
        assert all(c.attempt == 2 for _, c in leased)

    def test_replay_refuses_done_processing_pending_and_unknown(self, store: Store) -> None:
        done = store.claim(entry(1), now=T0, lease=LEASE)
        store.complete(entry(1).key, done.token, now=T0)
        store.claim(entry(2), now=T0, lease=LEASE)
        store.claim(entry(3), now=T0, lease=LEASE, defer=True)
        for key in (entry(1).key, entry(2).key, entry(3).key, "no-such-key"):
            assert not store.replay(key, now=T0 + 1)
        states = [store.get(entry(n).key).state for n in (1, 2, 3)]  # type: ignore[union-attr]
        assert states == [State.DONE, State.PROCESSING, State.PENDING]

    # Deferred mode and workers -----------------------------------------------------

    def test_deferred_claim_records_pending_without_a_lease(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, now=T0, lease=LEASE, defer=True)
        assert (claim.status, claim.token) == (ClaimStatus.PENDING, "")
        rec = store.get(e.key)
        assert rec is not None
        assert (rec.state, rec.attempts, rec.body, rec.lease_until) == (
            State.PENDING,
            0,
            e.body,
            None,
        )
        assert store.claim(e, now=T0 + 1, lease=LEASE, defer=True).status is ClaimStatus.PENDING
        assert store.get(e.key).attempts == 0  # type: ignore[union-attr]

    def test_deferred_duplicate_of_a_failed_record_requeues_it(self, store: Store) -> None:
        e = entry(1)
        claim = store.claim(e, now=T0, lease=LEASE)
        store.fail(e.key, claim.token, "err", now=T0 + 1)
        assert store.claim(e, now=T0 + 2, lease=LEASE, defer=True).status is ClaimStatus.PENDING
        assert store.get(e.key).state is State.PENDING  # type: ignore[union-attr]
        leased = store.lease_pending(now=T0 + 2, lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(e.key, 2)]

    def test_deferred_duplicate_of_done_is_done(self, store: Store) -> None:
        claim = store.claim(entry(1), now=T0, lease=LEASE)
        store.complete(entry(1).key, claim.token, now=T0)
        assert store.claim(entry(1), now=T0, lease=LEASE, defer=True).status is ClaimStatus.DONE

    def test_lease_pending_leases_each_pending_record_once(self, store: Store) -> None:
        for n in range(3):
            store.claim(entry(n), now=T0 + n, lease=LEASE, defer=True)
        leased = store.lease_pending(now=T0 + 10, lease=LEASE)
        assert sorted(r.key for r, _ in leased) == [entry(n).key for n in range(3)]
        for rec, claim in leased:
            assert (rec.state, rec.attempts, claim.status) == (
                State.PROCESSING,
                1,
                ClaimStatus.CLAIMED,
            )
            assert rec.lease_until == pytest.approx(T0 + 10 + LEASE)
            assert rec.body == entry(int(rec.key[1:])).body
        assert len({c.token for _, c in leased}) == 3
        assert store.lease_pending(now=T0 + 11, lease=LEASE) == []
        # A leased record's duplicate is in progress, and its token settles it.
        assert store.claim(entry(0), now=T0 + 12, lease=LEASE).status is ClaimStatus.IN_PROGRESS
        rec, claim = leased[0]
        assert store.complete(rec.key, claim.token, now=T0 + 13)

    def test_lease_pending_respects_the_limit(self, store: Store) -> None:
        for n in range(5):
            store.claim(entry(n), now=T0, lease=LEASE, defer=True)
        first = store.lease_pending(now=T0 + 1, lease=LEASE, limit=2)
        second = store.lease_pending(now=T0 + 1, lease=LEASE, limit=10)
        assert len(first) == 2
        assert len(second) == 3
        assert not {r.key for r, _ in first} & {r.key for r, _ in second}

    def test_lease_pending_takes_over_expired_leases(self, store: Store) -> None:
        inline = store.claim(entry(1), now=T0, lease=LEASE)  # a process died holding it
        assert store.lease_pending(now=T0 + LEASE - 1, lease=LEASE) == []
        leased = store.lease_pending(now=T0 + LEASE, lease=LEASE)
        assert [(r.key, c.attempt) for r, c in leased] == [(entry(1).key, 2)]
        assert not store.complete(entry(1).key, inline.token, now=T0 + LEASE + 1)
        assert store.complete(entry(1).key, leased[0][1].token, now=T0 + LEASE + 1)

    def test_concurrent_leasers_never_get_the_same_record(
        self, store: Store, reopen: Reopen
    ) -> None:
        for n in range(40):
            store.claim(entry(n), now=T0, lease=LEASE, defer=True)
        barrier = threading.Barrier(4)

        def lease() -> list[str]:
            mine, other = [], reopen()
            try:
                barrier.wait(timeout=30)
                while batch := other.lease_pending(now=T0 + 1, lease=LEASE, limit=3):
                    mine += [r.key for r, _ in batch]
            finally:
                other.close()
            return mine

        with ThreadPoolExecutor(4) as pool:
            got = [k for f in [pool.submit(lease) for _ in range(4)] for k in f.result()]
        assert sorted(got) == sorted(entry(n).key for n in range(40))  # each exactly once

    # Retention ---------------------------------------------------------------------

    def test_prune_deletes_only_finished_records_older_than_the_cutoff(self, store: Store) -> None:
        def settle(n: int, at: float, how: str) -> None:
            claim = store.claim(entry(n), now=at, lease=LEASE)
            if how == "done":
                store.complete(entry(n).key, claim.token, now=at)
            elif how != "processing":
                store.fail(entry(n).key, claim.token, "e", now=at, dead=how == "dead")

        settle(1, T0, "done")
        settle(2, T0, "failed")
        settle(3, T0, "dead")
        settle(4, T0, "processing")  # old but unfinished: kept
        store.claim(entry(5), now=T0, lease=LEASE, defer=True)  # old pending: kept
        settle(6, T0 + 100, "done")  # finished but recent: kept
        settle(7, T0 + 99, "failed")
        assert store.prune(T0 + 99) == 3
        assert store.get(entry(1).key) is None
        assert store.get(entry(2).key) is None
        assert store.get(entry(3).key) is None
        kept = {n: store.get(entry(n).key) for n in (4, 5, 6, 7)}
        assert all(rec is not None for rec in kept.values())
        assert store.prune(T0 + 99) == 0
        # A pruned delivery is new again: retention bounds how long replays are caught.
        assert store.claim(entry(1), now=T0 + 200, lease=LEASE).status is ClaimStatus.CLAIMED

    def test_records_lists_newest_first_and_filters_by_state(self, store: Store) -> None:
        for n in range(4):
            claim = store.claim(entry(n), now=T0 + n, lease=LEASE)
            if n % 2:
                store.complete(entry(n).key, claim.token, now=T0 + 10 + n)
        assert [r.key for r in store.records()] == [entry(n).key for n in (3, 1, 2, 0)]
        assert [r.key for r in store.records(State.DONE)] == [entry(3).key, entry(1).key]
        assert [r.key for r in store.records(State.PROCESSING, limit=1)] == [entry(2).key]
        assert store.records(State.DEAD) == []

    # The failure streak (auto-disable guard) ---------------------------------------

    def test_record_failure_trips_past_the_limit_then_starts_again(self, store: Store) -> None:
        assert [store.record_failure(3) for _ in range(8)] == [
            False,
            False,
            False,
            True,
            False,
            False,
            False,
            True,
        ]

    def test_complete_ends_the_failure_streak(self, store: Store) -> None:
        store.record_failure(2)
        store.record_failure(2)
        claim = store.claim(entry(1), now=T0, lease=LEASE)
        assert store.complete(entry(1).key, claim.token, now=T0)
        assert [store.record_failure(2) for _ in range(3)] == [False, False, True]

    def test_failure_streak_is_shared_by_every_instance(self, store: Store, reopen: Reopen) -> None:
        others = [reopen() for _ in range(3)]
        try:
            trips = [others[i % 3].record_failure(5) for i in range(12)]
        finally:
            for other in others:
                other.close()
        assert trips == [False] * 5 + [True] + [False] * 5 + [True]

    def test_concurrent_failures_trip_exactly_once_per_limit(
        self, store: Store, reopen: Reopen
    ) -> None:
        barrier = threading.Barrier(4)

        def fail_many() -> int:
            other = reopen()
            try:
                barrier.wait(timeout=30)
                return sum(other.record_failure(9) for _ in range(10))
            finally:
                other.close()

        with ThreadPoolExecutor(4) as pool:
            trips = sum(f.result() for f in [pool.submit(fail_many) for _ in range(4)])
        assert trips == 4  # 40 failures, a trip at every 10th: the count is atomic

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
            claim = await store.aclaim(e, now=T0, lease=LEASE)
            assert (claim.status, claim.attempt) == (ClaimStatus.CLAIMED, 1)
            dup = await store.aclaim(e, now=T0 + 1, lease=LEASE)
            assert dup.status is ClaimStatus.IN_PROGRESS
            assert not await store.acomplete(e.key, "wrong", now=T0 + 1)
            assert await store.afail(e.key, claim.token, "boom", now=T0 + 1)
            again = await store.aclaim(e, now=T0 + 2, lease=LEASE)
            assert again.attempt == 2
            assert await store.acomplete(e.key, again.token, now=T0 + 3)
            assert (await store.aclaim(e, now=T0 + 4, lease=LEASE)).status is ClaimStatus.DONE

            queued = await store.aclaim(f, now=T0, lease=LEASE, defer=True)
            assert queued.status is ClaimStatus.PENDING
            leased = await store.alease_pending(now=T0 + 1, lease=LEASE)
            assert [r.key for r, _ in leased] == [f.key]
            token = leased[0][1].token
            assert await store.afail(f.key, token, "again", now=T0 + 2, retry_at=T0 + 9)
            assert await store.alease_pending(now=T0 + 8, lease=LEASE) == []
            assert len(await store.alease_pending(now=T0 + 9, lease=LEASE)) == 1

            assert [await store.arecord_failure(1) for _ in range(2)] == [False, True]
            assert await store.aprune(T0 + 100) == 1  # e is done; f is processing

        run_async(store, lifecycle)
        assert store.get(entry(1).key) is None
        assert store.get(entry(2).key).state is State.PROCESSING  # type: ignore[union-attr]

    def test_async_claims_race_to_exactly_one_claim(self, store: Store) -> None:
        async def race() -> list[list[ClaimStatus]]:
            rounds = []
            for n in range(10):
                claims = [store.aclaim(entry(n), now=T0, lease=LEASE) for _ in range(8)]
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
            store.claim(entry(n), now=T0, lease=LEASE, defer=True)
        ctx = multiprocessing.get_context("fork")
        barrier, queue = ctx.Barrier(3), ctx.SimpleQueue()

        def worker() -> None:
            mine: list[str] = []
            other = reopen()
            try:
                barrier.wait(timeout=30)
                while batch := other.lease_pending(now=T0 + 1, lease=LEASE, limit=4):
                    mine += [r.key for r, _ in batch]
                queue.put(mine)
            except BaseException as exc:
                queue.put(repr(exc))
            finally:
                other.close()

        procs = [ctx.Process(target=worker) for _ in range(3)]
        for p in procs:
            p.start()
        got = [queue.get() for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert all(isinstance(keys, list) for keys in got), got
        assert sorted(k for keys in got for k in keys) == sorted(entry(n).key for n in range(60))

    @pytest.mark.slow
    def test_a_forked_child_uses_a_store_its_parent_had_opened(
        self, store: Store, reopen: Reopen
    ) -> None:
        claim = store.claim(entry(1), now=T0, lease=LEASE)  # the parent's connections are live
        ctx = multiprocessing.get_context("fork")
        queue = ctx.SimpleQueue()

        def child() -> None:
            try:
                done = store.complete(entry(1).key, claim.token, now=T0 + 1)
                again = store.claim(entry(2), now=T0 + 1, lease=LEASE).status.value
                queue.put((done, again))
            except BaseException as exc:
                queue.put(("error", repr(exc)))

        proc = ctx.Process(target=child)
        proc.start()
        result = queue.get()
        proc.join(timeout=30)
        assert result == (True, "claimed")
        # The parent's own connections survived the child's exit.
        assert store.claim(entry(1), now=T0 + 2, lease=LEASE).status is ClaimStatus.DONE
        assert store.claim(entry(2), now=T0 + 2, lease=LEASE).status is ClaimStatus.IN_PROGRESS


class TransactionalConformance:
    """For transactional stores: needs an ``effects`` fixture (an :class:`Effects`)."""

    def test_handler_write_and_done_mark_commit_together(
        self, store: Store, effects: Effects
    ) -> None:
        claim = store.claim(entry(1), now=T0, lease=LEASE)
        with store.transaction() as tx:
            effects.write(tx, "one")
            assert store.complete(entry(1).key, claim.token, now=T0 + 1)
            # Not visible outside the transaction yet: the done mark waits for commit.
            assert effects.rows() == []
        assert effects.rows() == ["one"]
        assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]

    def test_handler_error_rolls_back_its_write_and_the_done_mark(
        self, store: Store, effects: Effects
    ) -> None:
        claim = store.claim(entry(1), now=T0, lease=LEASE)

        def handler_then_error() -> None:
            with store.transaction() as tx:
                effects.write(tx, "lost")
                assert store.complete(entry(1).key, claim.token, now=T0 + 1)
                raise RuntimeError("handler broke")

        with pytest.raises(RuntimeError, match="handler broke"):
            handler_then_error()
        assert effects.rows() == []
        rec = store.get(entry(1).key)
        assert rec is not None
        assert rec.state is State.PROCESSING  # still leased: fail() settles it next
        assert store.fail(entry(1).key, claim.token, "RuntimeError", now=T0 + 2)

    def test_lost_lease_inside_the_transaction_rolls_the_write_back(
        self, store: Store, effects: Effects
    ) -> None:
        stale = store.claim(entry(1), now=T0, lease=LEASE)
        store.claim(entry(1), now=T0 + LEASE, lease=LEASE)  # another copy took over

        def late_handler() -> None:
            with store.transaction() as tx:
                effects.write(tx, "duplicate effect")
                if not store.complete(entry(1).key, stale.token, now=T0 + LEASE + 1):
                    raise LookupError("lease lost")  # what the receiver does (LeaseLost)

        with pytest.raises(LookupError):
            late_handler()
        assert effects.rows() == []


class AsyncTransactionalConformance:
    """For stores with native ``atransaction`` (``async_transactions = True``)."""

    def test_async_transaction_commits_and_rolls_back_with_the_done_mark(
        self, store: Store, effects: Effects
    ) -> None:
        async def both() -> None:
            ok = await store.aclaim(entry(1), now=T0, lease=LEASE)
            async with store.atransaction() as tx:
                await effects.awrite(tx, "kept")
                assert await store.acomplete(entry(1).key, ok.token, now=T0 + 1)
            bad = await store.aclaim(entry(2), now=T0, lease=LEASE)

            async def handler_then_error() -> None:
                async with store.atransaction() as tx:
                    await effects.awrite(tx, "dropped")
                    assert await store.acomplete(entry(2).key, bad.token, now=T0 + 1)
                    raise RuntimeError("handler broke")

            with pytest.raises(RuntimeError, match="handler broke"):
                await handler_then_error()

        run_async(store, both)
        assert effects.rows() == ["kept"]
        assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]
        assert store.get(entry(2).key).state is State.PROCESSING  # type: ignore[union-attr]
