"""An in-process, size-bounded ledger: for tests, benchmarks and single-process apps.

State is not shared between processes: under ``gunicorn -w 4`` each worker would run a
delivery its siblings already ran. Use SQLite (one host) or a network store instead.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from urllib.parse import parse_qs, urlsplit

from .._core.errors import ConfigurationError
from .._core.ledger import (
    FINISHED,
    Applied,
    Entry,
    Record,
    State,
    Store,
    Transition,
    admits,
)

__all__ = ["MemoryStore", "new_token"]


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

    def __init__(self, entry: Entry, now: float) -> None:
        self.key = entry.key
        self.state = State.PENDING
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
    """Keep records in a dict, evicting the oldest finished ones past ``max_records``.

    ``clock`` is the store's clock (``time.time``); tests pass their own to move time.
    """

    schemes = ("memory",)
    shared = False
    native_async = True

    def __init__(
        self, max_records: int = 100_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_records < 1:
            raise ConfigurationError("max_records must be at least 1")
        self.max_records = max_records
        self.clock = clock
        self._rows: OrderedDict[str, _Row] = OrderedDict()
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        raw = query.get("max_records", ["100000"])[0]
        try:
            return cls(max_records=int(raw))
        except ValueError:
            raise ConfigurationError(
                f"memory:// max_records must be a whole number, not {raw!r}"
            ) from None

    def apply(
        self,
        transition: Transition,
        key: str,
        *,
        entry: Entry | None = None,
        token: str = "",
        lease: float = 0.0,
        error: str | None = None,
        delay: float = 0.0,
        counter: str = "",
    ) -> Applied:
        with self._lock:
            now = self.clock()
            row = self._rows.get(key)
            state = None if row is None else row.state
            if row is None:
                ok = transition.inserts and entry is not None
            else:
                ok = admits(
                    transition,
                    state,
                    now=now,
                    lease_until=row.lease_until,
                    available_at=row.available_at,
                    held_by=row.token,
                    token=token,
                )
            if not ok:
                return Applied(False, state)
            if row is None:
                assert entry is not None
                self._evict()
                row = self._rows[key] = _Row(entry, now)
            row.state = transition.target
            row.updated_at = now
            if transition.lease:
                row.attempts += 1
                row.token = f"{next(_local_tokens):x}"
                row.lease_until = now + lease
            elif transition.extend:
                row.lease_until = now + lease
            else:
                row.token = row.lease_until = None
            row.available_at = now + delay if transition.delay else None
            if transition.error:
                row.error = error
            if transition.clear:
                row.body = row.error = None
            if transition.ends_streak and counter:
                self._counters.pop(counter, None)
            record = row.record() if transition.returns_record else None
            return Applied(True, transition.target, row.attempts, row.token or "", record)

    def _evict(self) -> None:
        excess = len(self._rows) - self.max_records + 1
        if excess <= 0:
            return
        victims: list[str] = []
        for key, row in self._rows.items():  # oldest first
            if row.state in FINISHED:
                victims.append(key)
                if len(victims) >= excess:
                    break
        for key in victims:
            del self._rows[key]

    def due(self, limit: int) -> Sequence[str]:
        now = self.clock()
        found: list[str] = []
        with self._lock:
            for row in self._rows.values():
                if len(found) >= limit:
                    break
                if (row.state is State.PENDING and (row.available_at or 0.0) <= now) or (
                    row.state is State.PROCESSING and (row.lease_until or 0.0) <= now
                ):
                    found.append(row.key)
        return found

    def get(self, key: str) -> Record | None:
        row = self._rows.get(key)
        return None if row is None else row.record()

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        with self._lock:
            found = [r.record() for r in self._rows.values() if state is None or r.state is state]
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[:limit]

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        before = self.clock() - older_than
        wanted = frozenset(states)
        with self._lock:
            old = [k for k, r in self._rows.items() if r.state in wanted and r.updated_at < before]
            for key in old:
                del self._rows[key]
            return len(old)

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        with self._lock:
            value = self._counters.get(counter, 0) + by
            if value >= limit:
                self._counters.pop(counter, None)
                return True
            self._counters[counter] = value
            return False

    # No I/O here: answer in the caller's thread instead of hopping to another.
    async def aapply(
        self,
        transition: Transition,
        key: str,
        *,
        entry: Entry | None = None,
        token: str = "",
        lease: float = 0.0,
        error: str | None = None,
        delay: float = 0.0,
        counter: str = "",
    ) -> Applied:
        return self.apply(
            transition,
            key,
            entry=entry,
            token=token,
            lease=lease,
            error=error,
            delay=delay,
            counter=counter,
        )

    async def adue(self, limit: int) -> Sequence[str]:
        return self.due(limit)

    async def abump(self, counter: str, limit: int, by: int = 1) -> bool:
        return self.bump(counter, limit, by)

    async def aprune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        return self.prune(older_than, states)
