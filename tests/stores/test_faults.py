"""Exactly once under faults, on every store: long handlers, blips, skewed clocks, crashes.

Each test is one of the failures the ledger v2 work fixed; each ran handlers twice (or
lost a delivery) before. Real Redis and PostgreSQL, a TCP proxy that is cut for the
outages, SIGKILL for the crashes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gptimg_webhooks import Delivery, Event, Webhooks, sign
from gptimg_webhooks._core.ledger import State, Store
from gptimg_webhooks.stores import open_store
from gptimg_webhooks.worker import Backoff
from tests.stores.conftest import with_query
from tests.support.contract import payload
from tests.support.proxy import Proxy

SECRET = "whsec_faults_0123456789abcdef0123"

Opener = Callable[[], Store]


def post(hooks: Webhooks, body: bytes, delivery: str | None = None) -> tuple[int, str]:
    headers = {
        "X-Gptimg-Signature": sign(body, SECRET),
        "X-Gptimg-Delivery": delivery or str(uuid.uuid4()),
        "X-Gptimg-Event": "generation.succeeded",
    }
    answer = hooks.handle("POST", headers, body)
    data = answer.json
    return answer.status, data.get("status") or data.get("error")


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger URL of each kind (memory: one store shared through the test)."""
    kind = request.param
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/ledger.db"
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        return with_query(url, prefix=request.getfixturevalue("redis_prefix"))
    url = request.getfixturevalue("postgres_url")
    return with_query(url, table=request.getfixturevalue("postgres_table"))


@pytest.fixture
def opener(store_url: str) -> Iterator[Opener]:
    """Open stores on the test's ledger; closed afterwards."""
    opened: list[Store] = []
    shared = open_store(store_url) if store_url.startswith("memory") else None

    def open_one() -> Store:
        if shared is not None:
            return shared
        store = open_store(store_url)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()
    if shared is not None:
        shared.close()


def receiver(store: Store, **options: Any) -> Webhooks:
    return Webhooks(SECRET, store=store, include_shared=False, **options)


# 2. A handler that outlives its lease ------------------------------------------------


def test_handler_outliving_its_lease_runs_once_while_its_runner_lives(opener: Opener) -> None:
    first, second = receiver(opener(), lease=1), receiver(opener(), lease=1)
    runs: list[int] = []
    started = threading.Event()

    def slow(event: Event, delivery: Delivery) -> None:
        runs.append(delivery.attempt)
        started.set()
        time.sleep(2.5)  # 2.5 leases: only renewal keeps the copy out

    first.on("generation.succeeded")(slow)
    second.on("generation.succeeded")(slow)
    body = payload(f"gen_slow_{uuid.uuid4().hex[:8]}")
    answers: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: answers.append(post(first, body)))
    thread.start()
    assert started.wait(5)
    time.sleep(1.5)
    assert post(second, body) == (409, "delivery_in_progress")
    thread.join(10)
    assert answers == [(200, "processed")]
    assert runs == [1]
    assert post(second, body) == (200, "duplicate")
    first.close()
    second.close()


# 3. Lease deadlines by the store's clock, not the receivers' -------------------------


@pytest.mark.parametrize("store_url", ["redis", "postgres"], indirect=True)
def test_a_receiver_with_a_skewed_clock_cannot_take_a_live_lease(opener: Opener) -> None:
    honest = receiver(opener(), lease=120)
    # 200 s ahead: by its own clock the honest receiver's lease ran out long ago.
    skewed = receiver(opener(), lease=120, clock=lambda: time.time() + 200)
    runs: list[str] = []
    started = threading.Event()

    def slow(event: Event) -> None:
        runs.append("run")
        started.set()
        time.sleep(1.0)

    honest.on("generation.succeeded")(slow)
    skewed.on("generation.succeeded")(slow)
    body = payload(f"gen_skew_{uuid.uuid4().hex[:8]}")
    answers: list[tuple[int, str]] = []
    thread = threading.Thread(target=lambda: answers.append(post(honest, body)))
    thread.start()
    assert started.wait(5)
    assert post(skewed, body) == (409, "delivery_in_progress")
    thread.join(10)
    assert answers == [(200, "processed")]
    assert runs == ["run"]
    honest.close()
    skewed.close()


# 1. A store blip between the handler and the done mark -------------------------------


@pytest.fixture
def redis_behind_proxy(redis_url: str, redis_prefix: str) -> Iterator[tuple[str, Proxy]]:
    port = int(redis_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])
    proxy = Proxy(port)
    proxy.start()
    yield with_query(f"redis://127.0.0.1:{proxy.port}/0", prefix=redis_prefix), proxy
    proxy.cut()


def test_store_blip_after_the_handler_does_not_run_it_again(
    redis_behind_proxy: tuple[str, Proxy], redis_url: str, redis_prefix: str
) -> None:
    url, proxy = redis_behind_proxy
    hooks = receiver(open_store(url))
    runs: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: Event, delivery: Delivery) -> None:
        runs.append(delivery.attempt)
        proxy.cut()  # the store vanishes right after the handler returns...
        threading.Timer(1.0, proxy.restore).start()  # ...for about a second

    body = payload(f"gen_blip_{uuid.uuid4().hex[:8]}")
    delivery = str(uuid.uuid4())
    assert post(hooks, body, delivery) == (200, "processed")
    # Meanwhile a copy gets a documented answer and never runs the handler.
    assert post(hooks, body, delivery) in (
        (503, "store_unavailable"),
        (409, "delivery_in_progress"),
    )
    direct = open_store(with_query(redis_url, prefix=redis_prefix))
    deadline = time.monotonic() + 10
    while not any(r.state is State.DONE for r in direct.records()):
        assert time.monotonic() < deadline, direct.records()
        time.sleep(0.1)
    assert post(hooks, body, delivery) == (200, "duplicate")  # the provider's retry
    assert runs == [1]
    direct.close()
    hooks.close()


# 4. Recovery without the provider: a receiver SIGKILLed mid-handler ------------------

_DOOMED = textwrap.dedent(
    """
    import sys, time, uuid
    from gptimg_webhooks import Webhooks, sign
    url, body_path, marker = sys.argv[1:4]
    body = open(body_path, "rb").read()
    hooks = Webhooks({secret!r}, store=url, lease=2, include_shared=False, reply_deadline=None)

    @hooks.on("generation.succeeded")
    def handler(event):
        open(marker, "w").write("started")
        time.sleep(60)

    hooks.handle("POST", {{
        "X-Gptimg-Signature": sign(body, {secret!r}),
        "X-Gptimg-Delivery": str(uuid.uuid4()),
        "X-Gptimg-Event": "generation.succeeded",
    }}, body)
    """
).format(secret=SECRET)


@pytest.mark.slow
@pytest.mark.parametrize("store_url", ["sqlite", "redis", "postgres"], indirect=True)
def test_record_left_by_a_killed_receiver_is_completed_by_the_sweep(
    store_url: str, opener: Opener, tmp_path: Path
) -> None:
    body = payload(f"gen_killed_{uuid.uuid4().hex[:8]}")
    (tmp_path / "body").write_bytes(body)
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOOMED, store_url, str(tmp_path / "body"), str(marker)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert proc.poll() is None, "the doomed receiver exited early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    store = opener()
    (record,) = store.records()
    assert record.state is State.PROCESSING  # left behind, lease running out

    survivor = receiver(store, lease=2, sweep_interval=0.5)
    runs: list[int] = []
    survivor.on("generation.succeeded")(lambda e, d: runs.append(d.attempt))
    survivor.start()  # a live process; no provider retry needed
    deadline = time.monotonic() + 15
    while store.get(record.key).state is not State.DONE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, store.get(record.key)
        time.sleep(0.1)
    assert runs == [2]  # once, from the stored body, as the next attempt
    survivor.close()


# 5. A handler's own SQL error is the handler's failure --------------------------------


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_handler_that_catches_its_own_sql_error_fails_as_a_handler(opener: Opener) -> None:
    import psycopg

    hooks = receiver(opener())
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: Event, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            with contextlib.suppress(psycopg.Error):  # swallowed: the transaction stays poisoned
                delivery.transaction.execute("SELECT 1/0")

    body = payload(f"gen_sqlerr_{uuid.uuid4().hex[:8]}")
    assert post(hooks, body) == (500, "handler_failed")
    (record,) = hooks.store.records()
    assert record.state is State.FAILED
    assert "TransactionAborted" in (record.error or "")
    assert post(hooks, body) == (200, "processed")  # the provider's retry
    assert attempts == [1, 2]
    hooks.close()


# A runner's run cut off by an outage goes back to the queue ---------------------------


@pytest.fixture(params=["redis", "postgres"])
def behind_proxy(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Proxy]]:
    """(URL through a proxy, direct URL, proxy) of a fresh Redis or PostgreSQL ledger."""
    if request.param == "redis":
        direct = request.getfixturevalue("redis_url")
        direct = with_query(direct, prefix=request.getfixturevalue("redis_prefix"))
    else:
        direct = request.getfixturevalue("postgres_url")
        direct = with_query(direct, table=request.getfixturevalue("postgres_table"))
    port = int(direct.split("://", 1)[1].split("@")[-1].split("/")[0].split(":")[1])
    proxy = Proxy(port)
    proxy.start()
    yield direct.replace(f":{port}/", f":{proxy.port}/", 1), direct, proxy
    proxy.cut()


def _settled(store: Store, key: str, timeout: float = 10) -> State:
    """Wait until the keeper has landed what the outage left (the lease is released)."""
    deadline = time.monotonic() + timeout
    while (record := store.get(key)) is None or record.state is State.PROCESSING:
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    return record.state


@pytest.mark.parametrize("fails", [False, True], ids=["done_mark", "failed_mark"])
def test_worker_run_cut_off_by_an_outage_is_queued_again_not_stranded(
    behind_proxy: tuple[str, str, Proxy], fails: bool
) -> None:
    url, direct_url, proxy = behind_proxy
    hooks = receiver(open_store(url), mode="deferred", backoff=Backoff(initial=0.2))
    direct = open_store(direct_url)
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: Event, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            proxy.cut()  # the store goes while the run settles...
            threading.Timer(1.0, proxy.restore).start()  # ...and comes back
            if fails:
                raise RuntimeError("the handler fails too")

    body = payload(f"gen_requeue_{uuid.uuid4().hex[:8]}")
    assert post(hooks, body) == (202, "queued")
    (first,) = hooks.recover(limit=1).values()
    assert first in {"store_unavailable", "handler_failed", "processed"}
    (record,) = direct.records()
    # No provider retry follows a 202: the run must be queued again (or done), never
    # left failed for a retry that will not come.
    assert _settled(direct, record.key) in {State.PENDING, State.DONE}
    deadline = time.monotonic() + 10
    while direct.get(record.key).state is not State.DONE:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, direct.get(record.key)
        hooks.recover(limit=1)
        time.sleep(0.2)
    assert attempts[0] == 1
    assert attempts[-1] >= 2 or not fails
    hooks.close()
    direct.close()


@pytest.mark.parametrize("behind_proxy", ["postgres"], indirect=True)
def test_request_answered_early_then_cut_off_is_queued_again_not_stranded(
    behind_proxy: tuple[str, str, Proxy],
) -> None:
    url, direct_url, proxy = behind_proxy
    hooks = receiver(open_store(url), reply_deadline=0.3, sweep_interval=0.5)
    direct = open_store(direct_url)
    attempts: list[int] = []

    @hooks.on("generation.succeeded")
    def handler(event: Event, delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            time.sleep(0.8)  # past the reply deadline: the provider has its 202
            proxy.cut()  # then the store goes before the done mark commits
            threading.Timer(1.0, proxy.restore).start()

    body = payload(f"gen_early_{uuid.uuid4().hex[:8]}")
    assert post(hooks, body) == (202, "processing")
    deadline = time.monotonic() + 20
    while not (records := direct.records()) or records[0].state is not State.DONE:
        assert time.monotonic() < deadline, records  # a failed record would wait forever
        time.sleep(0.2)
    assert attempts == [1, 2]  # the first run's commit never landed
    hooks.close()
    direct.close()
