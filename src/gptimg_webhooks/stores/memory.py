"""An in-process, size-bounded ledger: for tests, benchmarks and single-process apps.

State is not shared between processes: under ``gunicorn -w 4`` each worker would run a
delivery its siblings already ran. Use SQLite (one host) or a network store instead.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

from .._core.errors import ConfigurationError
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store

__all__ = ["MemoryStore"]

_FINISHED = (State.DONE, State.FAILED, State.DEAD)


def new_token() -> str:
    """Return a fencing token for a lease."""
    return os.urandom(8).hex()


class MemoryStore(Store):
    """Keep records in a dict, evicting the oldest finished ones past ``max_records``."""

    schemes = ("memory",)
    shared = False

    def __init__(self, max_records: int = 100_000) -> None:
        if max_records < 1:
            raise ConfigurationError("max_records must be at least 1")
        self.max_records = max_records
        self._records: OrderedDict[str, Record] = OrderedDict()
        self._tokens: dict[str, str] = {}
        self._streak = 0
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        query = parse_qs(urlsplit(url).query)
        return cls(max_records=int(query.get("max_records", ["100000"])[0]))

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        with self._lock:
            rec = self._records.get(entry.key)
            if rec is None:
                self._evict()
                state = State.PENDING if defer else State.PROCESSING
                rec = Record(
                    entry.key,
                    state,
                    entry.delivery_id,
                    entry.event,
                    entry.generation_id,
                    0,
                    entry.body,
                    None,
                    now,
                    now,
                )
            elif rec.state is State.DONE:
                return Claim(ClaimStatus.DONE)
            elif rec.state is State.DEAD:
                return Claim(ClaimStatus.DEAD)
            elif rec.state is State.PENDING:
                # Queued for workers (deferred, retry backoff, replay): not run inline.
                return Claim(ClaimStatus.PENDING)
            elif rec.state is State.PROCESSING and (rec.lease_until or 0) > now:
                return Claim(ClaimStatus.PENDING if defer else ClaimStatus.IN_PROGRESS)
            if defer:
                self._records[entry.key] = replace(
                    rec, state=State.PENDING, lease_until=None, updated_at=now
                )
                self._tokens.pop(entry.key, None)
                return Claim(ClaimStatus.PENDING)
            token = new_token()
            self._records[entry.key] = replace(
                rec,
                state=State.PROCESSING,
                attempts=rec.attempts + 1,
                lease_until=now + lease,
                updated_at=now,
            )
            self._tokens[entry.key] = token
            return Claim(ClaimStatus.CLAIMED, rec.attempts + 1, token)

    def _evict(self) -> None:
        excess = len(self._records) - self.max_records + 1
        if excess <= 0:
            return
        victims: list[str] = []
        for key, rec in self._records.items():  # oldest first
            if rec.state in _FINISHED:
                victims.append(key)
                if len(victims) >= excess:
                    break
        for key in victims:
            del self._records[key]

    def _settle(self, key: str, token: str, **changes: object) -> bool:
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.state is not State.PROCESSING or self._tokens.get(key) != token:
                return False
            del self._tokens[key]
            self._records[key] = replace(rec, lease_until=None, **changes)  # type: ignore[arg-type]
            if changes.get("state") is State.DONE:
                self._streak = 0
            return True

    def complete(self, key: str, token: str, *, now: float) -> bool:
        return self._settle(key, token, state=State.DONE, body=None, error=None, updated_at=now)

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
        return self._settle(
            key, token, state=state, error=error, updated_at=now, available_at=retry_at
        )

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        with self._lock:
            found = [r for r in self._records.values() if state is None or r.state is state]
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found[:limit]

    def replay(self, key: str, *, now: float) -> bool:
        with self._lock:
            rec = self._records.get(key)
            if rec is None or rec.state not in (State.FAILED, State.DEAD):
                return False
            self._records[key] = replace(
                rec, state=State.PENDING, updated_at=now, available_at=None
            )
            return True

    def prune(self, before: float) -> int:
        with self._lock:
            old = [
                k
                for k, r in self._records.items()
                if r.state in _FINISHED and r.updated_at < before
            ]
            for key in old:
                del self._records[key]
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
            for key, rec in self._records.items():
                if len(leased) >= limit:
                    break
                expired = rec.state is State.PROCESSING and (rec.lease_until or 0) <= now
                due = rec.state is State.PENDING and (rec.available_at or 0) <= now
                if due or expired:
                    token = new_token()
                    taken = replace(
                        rec,
                        state=State.PROCESSING,
                        attempts=rec.attempts + 1,
                        lease_until=now + lease,
                        available_at=None,
                        updated_at=now,
                    )
                    self._records[key] = taken
                    self._tokens[key] = token
                    leased.append((taken, Claim(ClaimStatus.CLAIMED, taken.attempts, token)))
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
