"""Check that a store whose server is unreachable fails fast, with StoreUnavailable only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gptimg_webhooks import StoreUnavailable
from gptimg_webhooks._core.ledger import Store
from tests.stores.conformance import LEASE, entry


def sync_calls(store: Store) -> dict[str, Callable[[], Any]]:
    """One call of every sync primitive and named operation of the contract."""
    e = entry(1)
    calls: dict[str, Callable[[], Any]] = {
        "claim": lambda: store.claim(e, lease=LEASE),
        "enqueue": lambda: store.enqueue(e),
        "renew": lambda: store.renew(e.key, "t", lease=LEASE),
        "complete": lambda: store.complete(e.key, "t", counter="g"),
        "fail": lambda: store.fail(e.key, "t", "err"),
        "retry": lambda: store.retry(e.key, "t", "err", delay=1.0),
        "bury": lambda: store.bury(e.key, "t", "err"),
        "replay": lambda: store.replay(e.key),
        "rerun": lambda: store.rerun(e.key, lease=LEASE),
        "lease_due": lambda: store.lease_due(lease=LEASE),
        "due": lambda: store.due(10),
        "get": lambda: store.get(e.key),
        "records": lambda: store.records(),
        "prune": lambda: store.prune(0),
        "bump": lambda: store.bump("g", 5),
    }
    if store.transactional:  # others open no connection for a transaction
        calls["transaction"] = lambda: store.transaction().__enter__()
    return calls


def async_calls(store: Store) -> dict[str, Callable[[], Any]]:
    """One call of every async primitive and named operation (coroutine factories)."""
    e = entry(1)
    calls: dict[str, Callable[[], Any]] = {
        "aclaim": lambda: store.aclaim(e, lease=LEASE),
        "aenqueue": lambda: store.aenqueue(e),
        "arenew": lambda: store.arenew(e.key, "t", lease=LEASE),
        "acomplete": lambda: store.acomplete(e.key, "t", counter="g"),
        "afail": lambda: store.afail(e.key, "t", "err"),
        "aretry": lambda: store.aretry(e.key, "t", "err", delay=1.0),
        "abury": lambda: store.abury(e.key, "t", "err"),
        "alease_due": lambda: store.alease_due(lease=LEASE),
        "adue": lambda: store.adue(10),
        "abump": lambda: store.abump("g", 5),
        "aprune": lambda: store.aprune(0),
    }
    if store.async_transactions:
        calls["atransaction"] = lambda: store.atransaction().__aenter__()
    return calls


def _outcome(call: Callable[[], Any]) -> tuple[str, float]:
    started = time.monotonic()
    try:
        call()
    except StoreUnavailable:
        return "StoreUnavailable", time.monotonic() - started
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}", time.monotonic() - started
    return "returned", time.monotonic() - started


def sync_outcomes(store: Store) -> dict[str, tuple[str, float]]:
    """Run every sync method at once (threads); return each one's outcome and seconds."""
    calls = sync_calls(store)
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(_outcome, call) for name, call in calls.items()}
        return {name: f.result() for name, f in futures.items()}


def async_outcomes(store: Store) -> dict[str, tuple[str, float]]:
    """Run every async method at once on one loop; return each one's outcome and seconds."""

    async def one(factory: Callable[[], Any]) -> tuple[str, float]:
        started = time.monotonic()
        try:
            await factory()
        except StoreUnavailable:
            return "StoreUnavailable", time.monotonic() - started
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}", time.monotonic() - started
        return "returned", time.monotonic() - started

    async def main() -> dict[str, tuple[str, float]]:
        calls = async_calls(store)
        try:
            results = await asyncio.gather(*(one(f) for f in calls.values()))
        finally:
            await store.aclose()
        return dict(zip(calls, results, strict=True))

    return asyncio.run(main())


def outage_and_recovery(open_via: Callable[[int], Store], target_port: int) -> tuple[float, float]:
    """Cut a live store's server off, then restore it; return (seconds to fail, to recover).

    ``open_via(port)`` opens the store through a forwarder on ``port``. The store must
    fail with StoreUnavailable while cut off, and serve claims again once restored,
    without being reopened: its pooled connections died with the outage.
    """
    from tests.support.proxy import Proxy

    proxy = Proxy(target_port)
    proxy.start()
    store = open_via(proxy.port)
    try:
        assert store.claim(entry(1), lease=LEASE).status.value == "claimed"
        proxy.cut()
        kind, down_seconds = _outcome(lambda: store.claim(entry(2), lease=LEASE))
        assert kind == "StoreUnavailable", kind
        proxy.start()
        started = time.monotonic()
        while True:
            try:
                claim = store.claim(entry(2), lease=LEASE)
                break
            except StoreUnavailable:
                assert time.monotonic() - started < 15, "the store never recovered"
                time.sleep(0.1)
        assert claim.status.value == "claimed"  # nothing was recorded while it was down
        return down_seconds, time.monotonic() - started
    finally:
        store.close()
        proxy.cut()
