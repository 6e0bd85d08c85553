from __future__ import annotations

from collections.abc import Iterator

import pytest

from gptimg_webhooks import ConfigurationError
from gptimg_webhooks._core.ledger import ClaimStatus, Store
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.redis import RedisStore
from tests.stores.conformance import (
    LEASE,
    T0,
    MultiProcessConformance,
    Reopen,
    StoreConformance,
    entry,
)
from tests.stores.conftest import with_query
from tests.stores.outage import async_outcomes, outage_and_recovery, sync_outcomes
from tests.support.servers import free_port

pytestmark = pytest.mark.redis


class TestRedisStore(StoreConformance, MultiProcessConformance):
    @pytest.fixture
    def reopen(self, redis_url: str, redis_prefix: str) -> Reopen:
        url = with_query(redis_url, prefix=redis_prefix)
        return lambda: open_store(url)


def test_redis_url_options_reach_the_client(redis_url: str, redis_prefix: str) -> None:
    store = open_store(with_query(redis_url, prefix=redis_prefix, socket_timeout="0.25"))
    assert isinstance(store, RedisStore)
    assert store.prefix == redis_prefix
    client, _ = store._sync()
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.25
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 1.0
    store.close()


def test_rediss_scheme_opens_a_tls_store() -> None:
    store = open_store("rediss://127.0.0.1:6380/0")
    assert isinstance(store, RedisStore)


def test_bad_redis_option_fails_at_start_up() -> None:
    with pytest.raises(ConfigurationError):
        open_store("redis://127.0.0.1:6379/0?socket_timeout=soon")


def test_prefixes_are_separate_ledgers(redis_url: str, redis_prefix: str) -> None:
    a = open_store(with_query(redis_url, prefix=redis_prefix + "a:"))
    b = open_store(with_query(redis_url, prefix=redis_prefix + "b:"))
    try:
        assert a.claim(entry(1), now=T0, lease=LEASE).status is ClaimStatus.CLAIMED
        assert b.claim(entry(1), now=T0, lease=LEASE).status is ClaimStatus.CLAIMED
    finally:
        a.close()
        b.close()


def test_prune_works_through_batches(redis_url: str, redis_prefix: str) -> None:
    store = open_store(with_query(redis_url, prefix=redis_prefix))
    try:
        for n in range(1203):  # more than two batches of 500
            claim = store.claim(entry(n), now=T0, lease=LEASE)
            store.complete(entry(n).key, claim.token, now=T0)
        assert store.prune(T0 + 1) == 1203
        assert store.records() == []
    finally:
        store.close()


@pytest.fixture
def dead_redis() -> Iterator[Store]:
    """A Redis store pointed at a port nothing listens on."""
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    yield store
    store.close()


def test_unreachable_redis_raises_store_unavailable_fast(dead_redis: Store) -> None:
    outcomes = sync_outcomes(dead_redis)
    assert {name: kind for name, (kind, _) in outcomes.items()} == dict.fromkeys(
        outcomes, "StoreUnavailable"
    )
    assert max(seconds for _, seconds in outcomes.values()) < 2.0


def test_unreachable_redis_raises_store_unavailable_fast_async(dead_redis: Store) -> None:
    outcomes = async_outcomes(dead_redis)
    assert {name: kind for name, (kind, _) in outcomes.items()} == dict.fromkeys(
        outcomes, "StoreUnavailable"
    )
    assert max(seconds for _, seconds in outcomes.values()) < 2.0


def test_redis_store_fails_fast_in_an_outage_and_recovers_by_itself(
    redis_url: str, redis_prefix: str
) -> None:
    down, recovered = outage_and_recovery(
        lambda port: open_store(f"redis://127.0.0.1:{port}/0?prefix={redis_prefix}"), 6379
    )
    assert down < 2.0
    assert recovered < 5.0
