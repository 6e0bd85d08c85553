from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from gptimg_webhooks import ConfigurationError, StoreUnavailable
from gptimg_webhooks._core.ledger import ClaimStatus, State, Store
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.stores.redis import RedisStore
from tests.stores.conformance import (
    LEASE,
    SHORT,
    MultiProcessConformance,
    Reopen,
    ServerTimeConformance,
    StoreConformance,
    entry,
    expire,
)
from tests.stores.conftest import with_query
from tests.stores.outage import async_outcomes, outage_and_recovery, sync_outcomes
from tests.support.proxy import Proxy
from tests.support.servers import free_port

pytestmark = pytest.mark.redis


class TestRedisStore(StoreConformance, MultiProcessConformance, ServerTimeConformance):
    @pytest.fixture
    def reopen(self, redis_url: str, redis_prefix: str) -> Reopen:
        url = with_query(redis_url, prefix=redis_prefix)
        return lambda: open_store(url)


@pytest.fixture
def reopen(redis_url: str, redis_prefix: str) -> Reopen:
    url = with_query(redis_url, prefix=redis_prefix)
    return lambda: open_store(url)


@pytest.fixture
def store(reopen: Reopen) -> Iterator[Store]:
    store = reopen()
    yield store
    store.close()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client, to look at the keys and the server's clock."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def server_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


# URLs -------------------------------------------------------------------------------


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


def test_read_only_open_accepts_create_false(redis_url: str, redis_prefix: str) -> None:
    store = open_store(with_query(redis_url, prefix=redis_prefix), create=False)
    try:
        assert store.get("no-such-key") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:notaport/0",
        "redis://127.0.0.1:70000/0",
        "redis://127.0.0.1:6379/notadb",
        "redis://127.0.0.1:6379/0?socket_timeout=soon",
        "redis://127.0.0.1:6379/0?max_connections=many",
        "redis://127.0.0.1:6379/0?no_such_option=1",
        "redis://127.0.0.1:6379/0?prefix=",
    ],
)
def test_bad_redis_url_is_a_configuration_error_at_start_up(url: str) -> None:
    with pytest.raises(ConfigurationError):
        RedisStore.from_url(url)
    with pytest.raises(ConfigurationError):
        open_store(url)


# Key layout ---------------------------------------------------------------------------


def test_keys_follow_the_documented_layout(store: Store, client: redis.Redis) -> None:
    assert isinstance(store, RedisStore)
    p = store.prefix
    claim = store.claim(entry(1), lease=LEASE)
    store.enqueue(entry(2))
    rec = store.get(entry(1).key)
    assert rec is not None
    fields = client.hgetall(f"{p}d:{entry(1).key}")
    assert fields[b"state"] == b"processing"
    assert fields[b"token"] == claim.token.encode()
    assert fields[b"body"] == entry(1).body
    assert client.zscore(f"{p}s:processing", entry(1).key) == pytest.approx(rec.updated_at)
    assert client.zscore(f"{p}leases", entry(1).key) == pytest.approx(rec.lease_until)
    assert client.zscore(f"{p}due", entry(2).key) is not None
    assert client.zscore(f"{p}leases", entry(2).key) is None

    store.bump("guard", 10, by=3)
    assert client.get(f"{p}c:guard") == b"3"
    assert store.complete(entry(1).key, claim.token, counter="guard")
    assert client.get(f"{p}c:guard") is None  # the streak ended with the success
    assert client.zscore(f"{p}leases", entry(1).key) is None
    assert client.zscore(f"{p}s:processing", entry(1).key) is None
    assert client.zscore(f"{p}s:done", entry(1).key) is not None
    assert b"body" not in client.hgetall(f"{p}d:{entry(1).key}")

    [(leased, _)] = store.lease_due(lease=LEASE)
    assert leased.key == entry(2).key
    assert client.zscore(f"{p}due", entry(2).key) is None
    assert client.zscore(f"{p}leases", entry(2).key) is not None


def test_prefixes_are_separate_ledgers(redis_url: str, redis_prefix: str) -> None:
    a = open_store(with_query(redis_url, prefix=redis_prefix + "a:"))
    b = open_store(with_query(redis_url, prefix=redis_prefix + "b:"))
    try:
        assert a.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED
        assert b.claim(entry(1), lease=LEASE).status is ClaimStatus.CLAIMED
        assert not a.bump("g", 2)
        assert not b.bump("g", 2)
    finally:
        a.close()
        b.close()


def test_prune_works_through_batches(store: Store, client: redis.Redis) -> None:
    assert isinstance(store, RedisStore)
    for n in range(1203):  # more than two batches of 500
        claim = store.claim(entry(n), lease=LEASE)
        store.complete(entry(n).key, claim.token)
    store.enqueue(entry("kept"))
    time.sleep(0.05)
    assert store.prune(0.01) == 1203
    assert [r.key for r in store.records()] == ["kept"]
    assert client.zcard(f"{store.prefix}s:done") == 0


def test_pruning_unfinished_states_drops_them_from_the_queue_too(store: Store) -> None:
    store.enqueue(entry(1))
    store.claim(entry(2), lease=SHORT)
    expire()
    assert store.prune(0.01, (State.PENDING, State.PROCESSING)) == 2
    assert store.due(10) == []


# The server's clock ---------------------------------------------------------------------


def test_lease_deadlines_follow_the_server_clock(
    store: Store, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 200)  # this host's clock is behind
    store.claim(entry(1), lease=LEASE)
    rec = store.get(entry(1).key)
    assert rec is not None
    assert rec.lease_until is not None
    assert rec.lease_until - LEASE == pytest.approx(server_now(client), abs=1.0)
    assert rec.created_at == pytest.approx(server_now(client), abs=1.0)


def test_a_slow_host_clock_neither_keeps_nor_breaks_another_instances_lease(
    store: Store, reopen: Reopen, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = reopen()
    try:
        other.claim(entry(1), lease=LEASE)  # live for a minute
        other.claim(entry(2), lease=SHORT)  # soon abandoned
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 200)
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
        assert store.due(10) == []
        expire()
        # Run out by the server's clock, though this host's clock says 200 s earlier.
        assert store.due(10) == [entry(2).key]
        assert store.claim(entry(2), lease=LEASE).status is ClaimStatus.CLAIMED
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
    finally:
        other.close()


def test_a_lease_taken_under_a_slow_host_clock_holds_for_a_correct_one(
    store: Store, reopen: Reopen, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = reopen()
    try:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() - 200)
        slow.claim(entry(1), lease=LEASE)
        monkeypatch.undo()
        assert store.claim(entry(1), lease=LEASE).status is ClaimStatus.IN_PROGRESS
        assert store.due(10) == []
    finally:
        slow.close()


# Outages ----------------------------------------------------------------------------


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


@pytest.fixture
def slow_redis(redis_url: str, redis_prefix: str) -> Iterator[tuple[Proxy, Store]]:
    """A store behind a proxy that holds Redis's answers, with a 0.3 s timeout."""
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = Proxy(port)
    proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0?socket_timeout=0.3&socket_connect_timeout=0.3"
    store = open_store(with_query(url, prefix=redis_prefix))
    yield proxy, store
    store.close()
    proxy.cut()


def test_an_answer_a_busy_event_loop_reads_late_is_not_an_outage(
    slow_redis: tuple[Proxy, Store], client: redis.Redis, redis_prefix: str
) -> None:
    # Redis answers within 0.1 s, but the event loop is busy with other requests' work
    # from 0.05 s to 0.65 s, past the 0.3 s timeout: the answer is in, only unread.
    proxy, store = slow_redis

    async def bump_while_the_loop_is_busy() -> bool:
        await store.abump("warm", 10)  # connected before the proxy slows down
        proxy.reply_delay = 0.1
        asyncio.get_running_loop().call_later(0.05, time.sleep, 0.6)
        return await store.abump("busy", 10)

    assert asyncio.run(bump_while_the_loop_is_busy()) is False
    assert client.get(f"{redis_prefix}c:busy") == b"1"


def test_a_redis_that_does_not_answer_is_unavailable_after_the_timeout_async(
    slow_redis: tuple[Proxy, Store],
) -> None:
    proxy, store = slow_redis

    async def bump_a_jammed_redis() -> float:
        await store.abump("warm", 10)
        proxy.reply_delay = 10.0  # jammed: the answer comes long after any timeout
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            await store.abump("jammed", 10)
        return time.monotonic() - started

    waited = asyncio.run(bump_a_jammed_redis())
    # The 0.3 s timeout on an idle loop; never past its stall limit (4 x 0.3 s).
    assert 0.3 <= waited < 1.2 + 0.5
    proxy.reply_delay = 0.0
    assert asyncio.run(store.abump("after", 10)) is False  # a new connection works


def test_redis_store_fails_fast_in_an_outage_and_recovers_by_itself(
    redis_url: str, redis_prefix: str
) -> None:
    down, recovered = outage_and_recovery(
        lambda port: open_store(f"redis://127.0.0.1:{port}/0?prefix={redis_prefix}"), 6379
    )
    assert down < 2.0
    assert recovered < 5.0
