from __future__ import annotations

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
