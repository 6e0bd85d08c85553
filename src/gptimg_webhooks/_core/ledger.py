"""The delivery ledger contract that every store implements.

A record is keyed by the SHA-256 of the signed body, not by the unsigned delivery id,
so a retry (same id) and a replay (same body, fresh id) are the same record.

States::

    pending ──lease──▶ processing ──▶ done
       ▲                   │  │
       │     (lease expiry)┘  └──▶ failed ──(attempts exhausted)──▶ dead
       └──────────── replay ───────────┘

A claim either takes the lease (``CLAIMED``, with a fencing token and the attempt
number) or reports why not. ``complete`` and ``fail`` only act while the caller's token
still holds the lease, so a worker that lost its lease cannot mark a record it no longer
owns.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Claim", "ClaimStatus", "Entry", "Record", "State", "Store"]


class State(str, enum.Enum):
    """Where a record stands."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class ClaimStatus(enum.Enum):
    """The outcome of a claim."""

    CLAIMED = "claimed"  # caller holds the lease and runs the handlers
    DONE = "done"  # already processed: a duplicate
    IN_PROGRESS = "in_progress"  # another copy holds a live lease
    PENDING = "pending"  # recorded for deferred processing, not leased
    DEAD = "dead"  # out of attempts; replay it locally


@dataclass(frozen=True, slots=True)
class Entry:
    """What a verified delivery contributes to its record."""

    key: str
    delivery_id: str
    event: str | None
    generation_id: str | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim's outcome; ``token`` fences the lease when ``status`` is CLAIMED."""

    status: ClaimStatus
    attempt: int = 0
    token: str = ""


@dataclass(frozen=True, slots=True)
class Record:
    """One delivery as the ledger keeps it. ``body`` is dropped once the record is done."""

    key: str
    state: State
    delivery_id: str
    event: str | None
    generation_id: str | None
    attempts: int
    body: bytes | None
    error: str | None
    created_at: float
    updated_at: float
    lease_until: float | None = None
    #: A pending record is not leased before this time (retry backoff); None: at once.
    available_at: float | None = None

    #: The column order :meth:`from_row` reads, for SQL stores.
    COLUMNS: ClassVar[str] = (
        "key, state, delivery_id, event, generation_id, attempts, body, error, "
        "created_at, updated_at, lease_until, available_at"
    )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Record:
        """Build a record from a SQL row selected as :attr:`COLUMNS`."""
        key, state, delivery_id, event, generation_id, attempts, body, *rest = row
        return cls(
            key,
            State(state),
            delivery_id,
            event,
            generation_id,
            attempts,
            bytes(body) if body is not None else None,
            *rest,
        )


class Store(ABC):
    """A ledger backend. Implement the sync methods; async ones default to a thread.

    Stores backed by network clients override the ``a*`` methods with native async
    calls. Every method raises :class:`~gptimg_webhooks.StoreUnavailable` when the
    backend cannot be reached, and nothing else for I/O trouble.
    """

    #: URL schemes this store is chosen by.
    schemes: tuple[str, ...] = ()
    #: True when state is shared by every process that opens the same URL.
    shared: bool = True
    #: True when :meth:`transaction` gives handlers a real transaction that
    #: :meth:`complete` joins: handler writes and the done mark commit together.
    transactional: bool = False
    #: True when :meth:`atransaction` is native; else the async driver runs the handlers
    #: and ``complete`` of a transactional store in one worker thread.
    async_transactions: bool = False
    #: True when the ``a*`` methods never wait on a thread (native async, or no I/O).
    #: Else the async driver hands a claimed delivery whose handlers are all sync to one
    #: worker thread: claim, handlers and done mark cost one thread hop, not one each.
    native_async: bool = False

    @abstractmethod
    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        """Record ``entry`` and take its lease, atomically.

        New records and failed ones (or processing ones whose lease expired) are
        claimed: the attempt count grows by one. With ``defer`` a new record is left
        ``PENDING`` for workers instead, and a failed one goes back to pending.
        """

    @abstractmethod
    def complete(self, key: str, token: str, *, now: float) -> bool:
        """Mark done while ``token`` holds the lease, and end the failure streak.

        Return whether it did.
        """

    @abstractmethod
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
        """Settle a failed run while ``token`` holds the lease; keep the body and error.

        The record becomes ``FAILED`` (a provider retry may claim it again), ``DEAD``
        with ``dead`` (out of attempts: only a replay revives it), or ``PENDING`` with
        ``retry_at`` (deferred mode: a worker leases it again from that time).
        """

    @abstractmethod
    def get(self, key: str) -> Record | None:
        """Return one record by key."""

    @abstractmethod
    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        """Return records, newest first, optionally of one state."""

    @abstractmethod
    def replay(self, key: str, *, now: float) -> bool:
        """Put a failed or dead record back to pending, available now; return whether it did."""

    @abstractmethod
    def prune(self, before: float) -> int:
        """Delete finished records last touched before ``before``; return how many."""

    @abstractmethod
    def record_failure(self, limit: int) -> bool:
        """Count one more consecutive handler failure, shared by every process.

        When the count would pass ``limit``, reset it and return True: the receiver
        then answers 2xx so the provider's own count of consecutive failures (which
        disables the endpoint at 8) starts again. ``complete`` also resets it.
        """

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        """Lease up to ``limit`` pending (or expired) records for a worker."""
        raise NotImplementedError(f"{type(self).__name__} does not support workers")

    def transaction(self) -> AbstractContextManager[Any]:
        """Open the unit of work around handlers and ``complete``; yields ``delivery.transaction``.

        A transactional store commits the handlers' own writes and the done mark
        together, and rolls both back when a handler raises or ``complete`` finds the
        lease lost. The default is no transaction (``None``).
        """
        return nullcontext()

    def atransaction(self) -> AbstractAsyncContextManager[Any]:
        """Async twin of :meth:`transaction`."""
        return nullcontext()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # Async variants: a thread by default, so a blocking driver never stalls the loop.
    async def aclaim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        return await asyncio.to_thread(self.claim, entry, now=now, lease=lease, defer=defer)

    async def acomplete(self, key: str, token: str, *, now: float) -> bool:
        return await asyncio.to_thread(self.complete, key, token, now=now)

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
        return await asyncio.to_thread(
            self.fail, key, token, error, now=now, dead=dead, retry_at=retry_at
        )

    async def alease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        return await asyncio.to_thread(self.lease_pending, now=now, lease=lease, limit=limit)

    async def arecord_failure(self, limit: int) -> bool:
        return await asyncio.to_thread(self.record_failure, limit)

    async def aprune(self, before: float) -> int:
        return await asyncio.to_thread(self.prune, before)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
