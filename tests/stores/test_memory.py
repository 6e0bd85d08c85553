from __future__ import annotations

import gc

import pytest

from gptimg_webhooks._core.errors import ConfigurationError
from gptimg_webhooks._core.ledger import ClaimStatus, State
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.memory import MemoryStore
from tests.stores.conformance import LEASE, Reopen, StoreConformance, entry


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def reopen(self) -> Reopen:
        store = MemoryStore()
        return lambda: store  # one process, one instance


def test_memory_url_sets_the_bound() -> None:
    store = open_store("memory://?max_records=7")
    assert isinstance(store, MemoryStore)
    assert store.max_records == 7


def test_memory_url_with_a_bad_bound_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="max_records"):
        open_store("memory://?max_records=abc")


def test_bound_evicts_the_oldest_finished_records_never_unfinished_ones() -> None:
    store = MemoryStore(max_records=3)
    done = store.claim(entry(1), lease=LEASE)
    store.complete(entry(1).key, done.token)
    store.claim(entry(2), lease=LEASE)  # in progress: never evicted
    store.enqueue(entry(3))  # pending: never evicted
    store.claim(entry(4), lease=LEASE)
    assert store.get(entry(1).key) is None
    assert [store.get(entry(n).key).state for n in (2, 3, 4)] == [  # type: ignore[union-attr]
        State.PROCESSING,
        State.PENDING,
        State.PROCESSING,
    ]
    assert store.claim(entry(2), lease=LEASE).status is ClaimStatus.IN_PROGRESS


def test_the_store_clock_decides_leases_not_the_callers() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    store.claim(entry(1), lease=LEASE)
    now[0] += LEASE - 1
    assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
    now[0] += 1
    assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED


def _done(store: MemoryStore, n: int) -> None:
    store.complete(entry(n).key, store.claim(entry(n), lease=LEASE).token)


def test_done_records_add_nothing_to_the_garbage_collectors_work() -> None:
    store = MemoryStore(max_records=10_000)
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2000):
        _done(store, n)
    gc.collect()
    # A done record is a tuple of plain values, which a collection stops tracking:
    # a million records no longer make every full collection walk a million objects.
    assert len(gc.get_objects()) - before < 200
    assert store.get(entry(7).key).state is State.DONE  # type: ignore[union-attr]
    assert store.claim(entry(7), lease=LEASE).status is ClaimStatus.DONE


def test_sweep_and_stats_find_every_unfinished_record_among_done_ones() -> None:
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    for n in range(50):
        _done(store, n)
    store.enqueue(entry(100))
    store.claim(entry(101), lease=LEASE)  # its runner dies: the lease runs out
    failed = store.claim(entry(102), lease=LEASE)
    store.fail(entry(102).key, failed.token, "boom")
    dead = store.claim(entry(103), lease=LEASE)
    store.bury(entry(103).key, dead.token, "boom")
    now[0] += LEASE + 1
    assert store.renew(entry(1).key, "stale", lease=LEASE) is False  # a done record stays done
    assert store.get(entry(1).key).state is State.DONE  # type: ignore[union-attr]
    assert sorted(store.due(10)) == sorted(entry(n).key for n in (100, 101))
    stats = store.stats()
    assert (stats.pending, stats.processing, stats.failed, stats.dead) == (1, 1, 1, 1)
    assert len(store.records(State.DONE, limit=100)) == 50
    assert store.replay(entry(102).key) and store.replay(entry(103).key)
    assert store.stats().pending == 3
    assert store.prune(0.0) == 50
    assert store.records(State.DONE) == [] and store.stats().pending == 3


def test_known_done_answers_from_memory_for_done_records_only() -> None:
    store = MemoryStore()
    claims = {n: store.claim(entry(n), lease=LEASE) for n in (1, 2)}
    assert store.complete(entry(1).key, claims[1].token)
    assert store.known_done(entry(1).key)
    assert not store.known_done(entry(2).key)  # still leased
    assert store.fail(entry(2).key, claims[2].token, "boom")
    assert not store.known_done(entry(2).key)
