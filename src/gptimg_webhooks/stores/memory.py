"""An in-process, size-bounded ledger: for tests, benchmarks and single-process apps.

State is not shared between processes: under ``gunicorn -w 4`` each worker would run a
delivery its siblings already ran. Use SQLite (one host) or a network store instead.
"""

from __future__ import annotations

import itertools
import operator
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from urllib.parse import parse_qs, urlsplit

from .._core.errors import ConfigurationError
from .._core.ledger import (
    FINISHED,
    Applied,
    Change,
    Claim,
    ClaimStatus,
    Entry,
    Record,
    State,
    Stats,
    Store,
    admits,
)

__all__ = ["MemoryStore", "new_token"]


def new_token() -> str:
    """Return a fencing token for a lease, unique across processes and hosts."""
    return os.urandom(8).hex()


_DUPLICATE = Claim(ClaimStatus.DONE)

# In one process a counter is unique enough, and cheaper than the OS's randomness.
_local_tokens = itertools.count(1)


#: A done record, compacted: delivery id, event, generation id, attempts, body, error,
#: created and updated times, traceparent. Atomic values only, so the garbage collector
#: stops tracking it: with a million records a full collection took 330 ms while every
#: record was a tracked object.
_Done = tuple[
    str, "str | None", "str | None", int, "bytes | None", "str | None", float, float, "str | None"
]


#: The fields of a _Done tuple, in order.
_DONE_FIELDS = (
    "delivery_id",
    "event",
    "generation_id",
    "attempts",
    "body",
    "error",
    "created_at",
    "updated_at",
    "traceparent",
)
_compact = operator.attrgetter(*_DONE_FIELDS)


def _record(key: str, value: _Row | _Done) -> Record:
    if isinstance(value, tuple):
        d = value
        return Record(
            key, State.DONE, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], None, None, d[8]
        )
    return value.record()


def _state(value: _Row | _Done) -> State:
    return State.DONE if isinstance(value, tuple) else value.state


def _updated_at(value: _Row | _Done) -> float:
    return value[7] if isinstance(value, tuple) else value.updated_at


class _Row:
    """A record's mutable twin: the hot path updates it in place instead of copying.

    Once done (and free of any lease) a row is kept as a :data:`_Done` tuple instead.
    """

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
        "traceparent",
        "updated_at",
    )

    def __init__(self, entry: Entry, now: float) -> None:
        self.key = entry.key
        self.state = State.PENDING
        self.delivery_id = entry.delivery_id
        # A handful of event names, one string each instead of a copy per record.
        self.event = None if entry.event is None else sys.intern(entry.event)
        self.generation_id = entry.generation_id
        self.attempts = 0
        self.body: bytes | None = entry.body
        self.error: str | None = None
        self.created_at = now
        self.updated_at = now
        self.lease_until: float | None = None
        self.available_at: float | None = None
        self.token: str | None = None
        self.traceparent = entry.traceparent

    def done(self) -> _Done | None:
        """Return this row compacted if it is done and holds no lease; else None."""
        if (
            self.state is not State.DONE
            or self.token is not None
            or self.lease_until is not None
            or self.available_at is not None
        ):
            return None
        return _compact(self)

    @classmethod
    def from_done(cls, key: str, done: _Done) -> _Row:
        row = cls.__new__(cls)
        row.key, row.state = key, State.DONE
        for name, value in zip(_DONE_FIELDS, done, strict=True):
            setattr(row, name, value)
        row.lease_until = row.available_at = row.token = None
        return row

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
            self.traceparent,
        )


class MemoryStore(Store):
    """Keep records in a dict, evicting the oldest finished ones past ``max_records``.

    ``clock`` is the store's clock (``time.time``); tests pass their own to move time.
    """

    schemes = ("memory",)
    shared = False
    native_async = True
    in_process = True

    def __init__(
        self, max_records: int = 100_000, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_records < 1:
            raise ConfigurationError("max_records must be at least 1")
        self.max_records = max_records
        self.clock = clock
        #: Every record, oldest first: a done one as a _Done tuple, any other as a _Row.
        self._rows: OrderedDict[str, _Row | _Done] = OrderedDict()
        #: The _Row values of _rows: what the sweep and stats() look at, without walking
        #: the done records (a million of them took half a second under the lock).
        self._live: dict[str, _Row] = {}
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()
        self._direct = type(self).apply is MemoryStore.apply

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        # A bad value raises ValueError; open_store names the URL in its ConfigurationError.
        return cls(max_records=int(query.get("max_records", ["100000"])[0]))

    def apply(self, change: Change) -> Applied:
        transition, key, entry, token, lease, error, delay, counter = change
        with self._lock:
            now = self.clock()
            row = self._live_row(key)
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
                if row is not None:
                    self._settle(row)
                return Applied(False, state)
            if row is None:
                assert entry is not None
                self._evict()
                row = self._rows[key] = self._live[key] = _Row(entry, now)
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
            applied = Applied(True, transition.target, row.attempts, row.token or "", record)
            self._settle(row)
            return applied

    def _live_row(self, key: str) -> _Row | None:
        """Return ``key``'s row as a _Row (a done one expanded again, in place), or None."""
        value = self._rows.get(key)
        if isinstance(value, tuple):
            row = self._rows[key] = self._live[key] = _Row.from_done(key, value)
            return row
        return value

    def _settle(self, row: _Row) -> None:
        """Compact a row that is done; any other stays a _Row."""
        done = row.done()
        if done is not None:
            self._rows[row.key] = done  # an existing key keeps its place in the order
            del self._live[row.key]

    def _delete(self, key: str) -> None:
        del self._rows[key]
        self._live.pop(key, None)

    # The request path's two operations, for the rows it meets nearly always: a new
    # delivery and a duplicate of a done one; a run that still holds its lease. They do
    # exactly what apply(CLAIM) and apply(COMPLETE) do for those rows, minus the generic
    # walk of the transition's sources; every other row, and a subclass that overrides
    # apply(), goes through apply().
    def claim(self, entry: Entry, *, lease: float) -> Claim:
        if not self._direct:
            return super().claim(entry, lease=lease)
        with self._lock:
            found = self._rows.get(entry.key)
            if found is None:
                now = self.clock()
                if len(self._rows) >= self.max_records:
                    self._evict()
                row = self._rows[entry.key] = self._live[entry.key] = _Row(entry, now)
                row.state = State.PROCESSING
                row.attempts = 1
                token = row.token = f"{next(_local_tokens):x}"
                row.lease_until = now + lease
                return Claim(ClaimStatus.CLAIMED, 1, token)
            if type(found) is tuple or found.state is State.DONE:  # type: ignore[union-attr]
                return _DUPLICATE
        return super().claim(entry, lease=lease)

    def complete(self, key: str, token: str, *, counter: str = "") -> bool:
        if not self._direct:
            return super().complete(key, token, counter=counter)
        with self._lock:
            row = self._live.get(key)
            if row is not None and row.state is State.PROCESSING and token and row.token == token:
                row.state = State.DONE
                row.updated_at = self.clock()
                row.token = row.lease_until = row.available_at = None
                row.body = row.error = None
                if counter:
                    self._counters.pop(counter, None)
                self._settle(row)
                return True
        return super().complete(key, token, counter=counter)

    def _evict(self) -> None:
        excess = len(self._rows) - self.max_records + 1
        if excess <= 0:
            return
        victims: list[str] = []
        for key, row in self._rows.items():  # oldest first
            if _state(row) in FINISHED:
                victims.append(key)
                if len(victims) >= excess:
                    break
        for key in victims:
            self._delete(key)

    def due(self, limit: int) -> Sequence[str]:
        now = self.clock()
        found: list[str] = []
        with self._lock:
            for row in self._live.values():
                if len(found) >= limit:
                    break
                if (row.state is State.PENDING and (row.available_at or 0.0) <= now) or (
                    row.state is State.PROCESSING and (row.lease_until or 0.0) <= now
                ):
                    found.append(row.key)
        return found

    def get(self, key: str) -> Record | None:
        value = self._rows.get(key)
        return None if value is None else _record(key, value)

    def known_done(self, key: str) -> bool:
        # One dict read, atomic under the GIL: no lock, and a stale miss only means the
        # claim answers instead.
        value = self._rows.get(key)
        return value is not None and _state(value) is State.DONE

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        with self._lock:
            found = [
                _record(k, v) for k, v in self._rows.items() if state is None or _state(v) is state
            ]
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[:limit]

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        before = self.clock() - older_than
        wanted = frozenset(states)
        with self._lock:
            old = [
                k for k, v in self._rows.items() if _state(v) in wanted and _updated_at(v) < before
            ]
            for key in old:
                self._delete(key)
            return len(old)

    def stats(self, counters: Collection[str] = ()) -> Stats:
        now = self.clock()
        with self._lock:
            counts = dict.fromkeys(State, 0)
            oldest: float | None = None
            for row in self._live.values():  # done records count for nothing here
                counts[row.state] += 1
                if row.state is State.PENDING and (oldest is None or row.updated_at < oldest):
                    oldest = row.updated_at
            streaks = {c: self._counters.get(c, 0) for c in counters}
        return Stats(
            counts[State.PENDING],
            None if oldest is None else max(0.0, now - oldest),
            counts[State.DEAD],
            counts[State.FAILED],
            counts[State.PROCESSING],
            streaks,
        )

    async def astats(self, counters: Collection[str] = ()) -> Stats:
        return self.stats(counters)

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        with self._lock:
            value = self._counters.get(counter, 0) + by
            if value >= limit:
                self._counters.pop(counter, None)
                return True
            self._counters[counter] = value
            return False

    # No I/O here: answer in the caller's thread instead of hopping to another.
    async def aapply(self, change: Change) -> Applied:
        return self.apply(change)

    async def aclaim(self, entry: Entry, *, lease: float) -> Claim:
        if not self._direct:  # a subclass's apply() and aapply() decide
            return await super().aclaim(entry, lease=lease)
        return self.claim(entry, lease=lease)

    async def acomplete(self, key: str, token: str, *, counter: str = "") -> bool:
        if not self._direct:
            return await super().acomplete(key, token, counter=counter)
        return self.complete(key, token, counter=counter)

    async def adue(self, limit: int) -> Sequence[str]:
        return self.due(limit)

    async def abump(self, counter: str, limit: int, by: int = 1) -> bool:
        return self.bump(counter, limit, by)

    async def aprune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        return self.prune(older_than, states)
