from __future__ import annotations

import pytest

from gptimg_webhooks._core.ledger import ClaimStatus, State
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.memory import MemoryStore
from tests.stores.conformance import LEASE, T0, Reopen, StoreConformance, entry


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def reopen(self) -> Reopen:
        store = MemoryStore()
        return lambda: store  # one process, one instance


def test_memory_url_sets_the_bound() -> None:
    store = open_store("memory://?max_records=7")
    assert isinstance(store, MemoryStore)
    assert store.max_records == 7


def test_bound_evicts_the_oldest_finished_records_never_unfinished_ones() -> None:
    store = MemoryStore(max_records=3)
    done = store.claim(entry(1), now=T0, lease=LEASE)
    store.complete(entry(1).key, done.token, now=T0)
    store.claim(entry(2), now=T0, lease=LEASE)  # in progress: never evicted
    store.claim(entry(3), now=T0, lease=LEASE, defer=True)  # pending: never evicted
    store.claim(entry(4), now=T0, lease=LEASE)
    assert store.get(entry(1).key) is None
    assert [store.get(entry(n).key).state for n in (2, 3, 4)] == [  # type: ignore[union-attr]
        State.PROCESSING,
        State.PENDING,
        State.PROCESSING,
    ]
    assert store.claim(entry(2), now=T0, lease=LEASE).status is ClaimStatus.IN_PROGRESS
