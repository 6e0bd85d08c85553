"""An in-process, size-bounded ledger: for tests, benchmarks and single-process apps.

State is not shared between processes: under ``gunicorn -w 4`` each worker would run a
delivery its siblings already ran. Use SQLite (one host) or a network store instead.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from .._core.errors import ConfigurationError
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store

__all__ = ["MemoryStore"]

_FINISHED = (State.DONE, State.FAILED, State.DEAD)


def new_token() -> str:
    """Return a fencing token for a lease, unique across processes and hosts."""
    return os.urandom(8).hex()


# In one process a counter is unique enough, and cheaper than the OS's randomness.
_local_tokens = itertools.count(1)


class _Row:
    """A record's mutable twin: the hot path updates it in place instead of copying."""

    __slots__ = (
        "attempts",
        "available_at",
        "body",
        "created_at",
        "delivery_id",
        "error",
        "event",
        "generation_id",
        "key",
        "lease_until",
        "state",
        "token",
        "updated_at",
    )

    def __init__(self, entry: Entry, state: State, now: float) -> None:
        self.key = entry.key
        self.state = state
        self.delivery_id = entry.delivery_id
        self.event = entry.event
        self.generation_id = entry.generation_id
        self.attempts = 0
        self.body: bytes | None = entry.body
        self.error: str | None = None
        self.created_at = now
        self.updated_at = now
        self.lease_until: float | None = None
        self.available_at: float | None = None
        self.token: str | None = None

    def take(self, now: float, lease: float) -> Claim:
        self.state = State.PROCESSING
        self.attempts += 1
        self.lease_until = now + lease
        self.available_at = None
        self.updated_at = now
        self.token = token = f"{next(_local_tokens):x}"
        return Claim(ClaimStatus.CLAIMED, self.attempts, token)

    def settle(
        self, state: State, now: float, error: str | None, available_at: float | None
    ) -> None:
        self.state = state
        self.token = None
        self.lease_until = None
        self.error = error
        self.available_at = available_at
        self.updated_at = now
        if state is State.DONE:
            self.body = None

    def record(self) -> Record:
        return Record(
            self.key,
            self.state,
            self.delivery_id,
            self.event,
            self.generation_id,
            self.attempts,
            self.body,
            self.error,
            self.created_at,
            self.updated_at,
            self.lease_until,
            self.available_at,
        )


class MemoryStore(Store):
    """Keep records in a dict, evicting the oldest finished ones past ``max_records``."""

    schemes = ("memory",)
    shared = False
    native_async = True

    def __init__(self, max_records: int = 100_000) -> None:
        if max_records < 1:
            raise ConfigurationError("max_records must be at least 1")
        self.max_records = max_records
        self._rows: OrderedDict[str, _Row] = OrderedDict()
        self._streak = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        return cls(max_records=int(query.get("max_records", ["100000"])[0]))

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        with self._lock:
            row = self._rows.get(entry.key)
            if row is None:
                self._evict()
                row = self._rows[entry.key] = _Row(entry, State.PENDING, now)
            elif row.state is State.DONE:
                return Claim(ClaimStatus.DONE)
            elif row.state is State.DEAD:
                return Claim(ClaimStatus.DEAD)
            elif row.state is State.PENDING:
                # Queued for workers (deferred, retry backoff, replay): not run inline.
                return Claim(ClaimStatus.PENDING)
            elif row.state is State.PROCESSING and (row.lease_until or 0) > now:
                return Claim(ClaimStatus.PENDING if defer else ClaimStatus.IN_PROGRESS)
            if not defer:
                return row.take(now, lease)
            row.state = State.PENDING
            row.token = row.lease_until = None
            row.updated_at = now
            return Claim(ClaimStatus.PENDING)

    def _evict(self) -> None:
        excess = len(self._rows) - self.max_records + 1
        if excess <= 0:
            return
        victims: list[str] = []
        for key, row in self._rows.items():  # oldest first
            if row.state in _FINISHED:
                victims.append(key)
                if len(victims) >= excess:
                    break
        for key in victims:
            del self._rows[key]

    def _settle(
        self,
        key: str,
        token: str,
        state: State,
        now: float,
        error: str | None = None,
        available_at: float | None = None,
    ) -> bool:
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state is not State.PROCESSING or row.token != token:
                return False
            row.settle(state, now, error, available_at)
            if state is State.DONE:
                self._streak = 0
            return True

    def complete(self, key: str, token: str, *, now: float) -> bool:
        return self._settle(key, token, State.DONE, now)

    def fail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        state = State.DEAD if dead else State.PENDING if retry_at is not None else State.FAILED
        return self._settle(key, token, state, now, error, retry_at)

    def get(self, key: str) -> Record | None:
        row = self._rows.get(key)
        return None if row is None else row.record()

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        with self._lock:
            found = [r.record() for r in self._rows.values() if state is None or r.state is state]
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[:limit]

    def replay(self, key: str, *, now: float) -> bool:
        with self._lock:
            row = self._rows.get(key)
            if row is None or row.state not in (State.FAILED, State.DEAD):
                return False
            row.state = State.PENDING
            row.updated_at = now
            row.available_at = None
            return True

    def prune(self, before: float) -> int:
        with self._lock:
            old = [
                k for k, r in self._rows.items() if r.state in _FINISHED and r.updated_at < before
            ]
            for key in old:
                del self._rows[key]
            return len(old)

    def record_failure(self, limit: int) -> bool:
        with self._lock:
            self._streak += 1
            if self._streak > limit:
                self._streak = 0
                return True
            return False

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        leased: list[tuple[Record, Claim]] = []
        with self._lock:
            for row in self._rows.values():
                if len(leased) >= limit:
                    break
                expired = row.state is State.PROCESSING and (row.lease_until or 0) <= now
                due = row.state is State.PENDING and (row.available_at or 0) <= now
                if due or expired:
                    claim = row.take(now, lease)
                    leased.append((row.record(), claim))
        return leased

    # No I/O here: answer in the caller's thread instead of hopping to another.
    async def aclaim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        return self.claim(entry, now=now, lease=lease, defer=defer)

    async def acomplete(self, key: str, token: str, *, now: float) -> bool:
        return self.complete(key, token, now=now)

    async def afail(
        self,
        key: str,
        token: str,
        error: str,
        *,
        now: float,
        dead: bool = False,
        retry_at: float | None = None,
    ) -> bool:
        return self.fail(key, token, error, now=now, dead=dead, retry_at=retry_at)

    async def arecord_failure(self, limit: int) -> bool:
        return self.record_failure(limit)

    async def aprune(self, before: float) -> int:
        return self.prune(before)
