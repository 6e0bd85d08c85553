"""The delivery ledger: its state machine, written once as data, and the store contract.

A record is keyed by the SHA-256 of the signed body, not by the unsigned delivery id,
so a retry (same id) and a replay (same body, fresh id) are the same record.

States::

    (new) ─claim──────▶ processing ──complete──▶ done
      │                  ▲   │  │
      │     lease/rerun ─┘   │  ├──fail──▶ failed ──claim/rerun──▶ processing
      │                      │  ├──retry─▶ pending ──lease──▶ processing
      └─enqueue─▶ pending    │  └──bury──▶ dead ──replay/rerun──▶ ...
                             └──(lease runs out: claim or lease takes it over)

:data:`TRANSITIONS` is the whole machine: for each named operation, the rows it may act
on (:class:`Source`) and what it makes of them. A backend implements only the atomic
primitive :meth:`Store.apply` (compare-and-set of one row against a transition, with the
store's own clock), a handful of queries, and nothing about states: the named operations
(:meth:`Store.claim`, :meth:`Store.complete`, ...) and the meaning of a refusal
(:func:`claim_status`) live here, once.

Leases are fenced: an operation from a runner (``HELD``) acts only while the caller's
token still holds the record, so a runner that lost its lease cannot settle a record it
no longer owns. Lease deadlines and expiry are judged by the store's clock, so no host's
clock can break a lease.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

__all__ = [
    "BURY",
    "CLAIM",
    "COMPLETE",
    "ENQUEUE",
    "FAIL",
    "FINISHED",
    "GATE",
    "LEASE",
    "NUDGE",
    "RENEW",
    "REPLAY",
    "RERUN",
    "RETRY",
    "TRANSITIONS",
    "WATCH",
    "Applied",
    "Change",
    "Claim",
    "ClaimStatus",
    "Entry",
    "Record",
    "Source",
    "State",
    "Stats",
    "Store",
    "Transition",
    "claim_status",
    "open_url",
    "set_opener",
]


class State(str, enum.Enum):
    """Where a record stands."""

    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


#: States a record is settled in; retention applies to these.
FINISHED = (State.DONE, State.FAILED, State.DEAD)


class Source(str, enum.Enum):
    """What a row must be for a transition to act on it."""

    ABSENT = "absent"  # no record yet: the transition inserts one
    DUE = "due"  # pending, and its available_at (if any) has come
    EXPIRED = "expired"  # processing, its lease run out by the store's clock
    HELD = "held"  # processing under the caller's fencing token
    PENDING = "pending"  # pending, due or not
    FAILED = "failed"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Transition:
    """One named operation of the state machine."""

    name: str
    sources: frozenset[Source]
    target: State
    #: Take a new lease: fresh token, lease_until = store now + lease, attempts + 1.
    lease: bool = False
    #: Extend the caller's lease: lease_until = store now + lease, same token.
    extend: bool = False
    #: Store the caller's error text.
    error: bool = False
    #: Leasable again only from store now + delay (retry backoff).
    delay: bool = False
    #: Drop the body and the error (the record is done: nothing left to replay).
    clear: bool = False
    #: Reset the caller's failure streak counter along with it.
    ends_streak: bool = False
    #: Answer with the whole record (runners need the body and attempt).
    returns_record: bool = False

    @property
    def inserts(self) -> bool:
        return Source.ABSENT in self.sources


def _t(name: str, sources: Collection[Source], target: State, **flags: bool) -> Transition:
    return Transition(name, frozenset(sources), target, **flags)


S = Source
#: A verified delivery arrives in inline mode: run it now.
CLAIM = _t("claim", {S.ABSENT, S.FAILED, S.EXPIRED}, State.PROCESSING, lease=True)
#: A verified delivery arrives in deferred mode: queue it for a runner.
ENQUEUE = _t("enqueue", {S.ABSENT, S.FAILED}, State.PENDING)
#: A runner (worker, recovery sweep) takes a due or abandoned record.
LEASE = _t("lease", {S.DUE, S.EXPIRED}, State.PROCESSING, lease=True, returns_record=True)
#: Run a failed or dead record again now (local replay).
RERUN = _t("rerun", {S.FAILED, S.DEAD}, State.PROCESSING, lease=True, returns_record=True)
#: The runner is alive: push its lease's end out.
RENEW = _t("renew", {S.HELD}, State.PROCESSING, extend=True)
COMPLETE = _t("complete", {S.HELD}, State.DONE, clear=True, ends_streak=True)
#: Failed; the provider's retry (or a rerun) claims it again.
FAIL = _t("fail", {S.HELD}, State.FAILED, error=True)
#: Failed; a runner leases it again after a delay.
RETRY = _t("retry", {S.HELD}, State.PENDING, error=True, delay=True)
#: Out of attempts: kept with its body until someone replays it.
BURY = _t("bury", {S.HELD}, State.DEAD, error=True)
#: Put a failed or dead record back in the queue.
REPLAY = _t("replay", {S.FAILED, S.DEAD}, State.PENDING)
#: Remember a submitted generation: a runner polls the provider for it after a delay.
WATCH = _t("watch", {S.ABSENT}, State.PENDING, delay=True)
#: A terminal delivery takes its generation's gate, watched or not, so a poll of the same
#: generation cannot run the handlers too (and the other way round).
GATE = _t("gate", {S.ABSENT, S.PENDING, S.FAILED, S.EXPIRED}, State.PROCESSING, lease=True)
#: Make a pending record due now (reconcile by hand).
NUDGE = _t("nudge", {S.PENDING}, State.PENDING)
del S

TRANSITIONS: dict[str, Transition] = {
    t.name: t for t in (CLAIM, ENQUEUE, LEASE, RERUN, RENEW, COMPLETE, FAIL, RETRY, BURY, REPLAY)
}


_opener: list[Callable[[str], Store]] = []


def set_opener(opener: Callable[[str], Store]) -> None:
    """Let ``stores`` resolve URLs for the core, which never imports a backend itself."""
    _opener[:] = [opener]


def open_url(url: str) -> Store:
    """Open the store a URL names, through the opener ``gptimg_webhooks.stores`` registered."""
    if not _opener:  # pragma: no cover - the package's __init__ registers it
        from .errors import ConfigurationError

        raise ConfigurationError("no store opener: import gptimg_webhooks first")
    return _opener[0](url)


class ClaimStatus(enum.Enum):
    """The outcome of a claim or an enqueue."""

    CLAIMED = "claimed"  # caller holds the lease and runs the handlers
    DONE = "done"  # already processed: a duplicate
    IN_PROGRESS = "in_progress"  # another runner holds a live lease
    PENDING = "pending"  # queued for a runner, not leased
    DEAD = "dead"  # out of attempts; replay it


_REFUSED = {
    State.DONE: ClaimStatus.DONE,
    State.DEAD: ClaimStatus.DEAD,
    State.PENDING: ClaimStatus.PENDING,
    State.PROCESSING: ClaimStatus.IN_PROGRESS,
}


def claim_status(found: State | None) -> ClaimStatus | None:
    """Say what a refused claim or enqueue means, from the state the store found.

    None: the record changed between the attempt and the look (failed or pruned in
    between), so the caller tries again.
    """
    return None if found is None else _REFUSED.get(found)


@dataclass(frozen=True, slots=True)
class Entry:
    """What a verified delivery contributes to its record."""

    key: str
    delivery_id: str
    event: str | None
    generation_id: str | None
    body: bytes
    #: W3C trace context of the receiving span, for a runner's span to link to.
    traceparent: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim's outcome; ``token`` fences the lease when ``status`` is CLAIMED."""

    status: ClaimStatus
    attempt: int = 0
    token: str = ""
    #: This enqueue created the pending record (not a duplicate of a queued one).
    queued: bool = False


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
    #: The receiving span's W3C trace context, when the store keeps it (else None).
    traceparent: str | None = None

    #: The column order :meth:`from_row` reads, for SQL stores.
    COLUMNS: ClassVar[str] = (
        "key, state, delivery_id, event, generation_id, attempts, body, error, "
        "created_at, updated_at, lease_until, available_at, traceparent"
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


@dataclass(frozen=True, slots=True)
class Stats:
    """What an operator alerts on, read from the ledger at one moment.

    ``oldest_pending_age`` is in seconds by the store's clock (None: nothing pending);
    ``streaks`` maps counter names to their value (a counter a store cannot read is
    left out). ``exact`` is False when a count was capped by the generic fallback.
    """

    pending: int
    oldest_pending_age: float | None
    dead: int
    failed: int
    processing: int
    streaks: dict[str, int]
    exact: bool = True


#: How many records the generic :meth:`Store.stats` reads per state.
STATS_SCAN = 10_000


class Change(NamedTuple):
    """One transition asked of one record: what :meth:`Store.apply` applies atomically.

    ``entry`` fills a new row (transitions that insert); ``token`` is the caller's for
    ``HELD``; ``lease`` and ``delay`` are seconds from the store's now; ``counter`` names
    the failure streak a transition with ``ends_streak`` resets.
    """

    transition: Transition
    key: str
    entry: Entry | None = None
    token: str = ""
    lease: float = 0.0
    error: str | None = None
    delay: float = 0.0
    counter: str = ""


@dataclass(frozen=True, slots=True)
class Applied:
    """What :meth:`Store.apply` did.

    ``ok``: the row matched one of the transition's sources and was changed; then
    ``attempts`` and ``token`` are the record's new ones (and ``record`` the whole row
    when the transition asks for it). Refused: ``found`` is the state the row was in
    (None when there is no row).
    """

    ok: bool
    found: State | None = None
    attempts: int = 0
    token: str = ""
    record: Record | None = None


class Store(ABC):
    """A ledger backend: atomic primitives; the states are :data:`TRANSITIONS`' business.

    Implement :meth:`apply`, :meth:`due`, :meth:`get`, :meth:`records`, :meth:`prune`
    and :meth:`bump`; the async ``a*`` twins default to a worker thread, and stores with
    native async clients override them. Every method raises
    :class:`~gptimg_webhooks.StoreUnavailable` when the backend cannot be reached, and
    nothing else for I/O trouble.
    """

    #: URL schemes this store is chosen by.
    schemes: tuple[str, ...] = ()
    #: True when state is shared by every process that opens the same URL.
    shared: bool = True
    #: True when :meth:`transaction` gives handlers a real transaction that the done
    #: mark joins: handler writes and the done mark commit together.
    transactional: bool = False
    #: True when :meth:`atransaction` is native; else the async driver runs the handlers
    #: and the done mark of a transactional store in one worker thread.
    async_transactions: bool = False
    #: True when the ``a*`` methods never wait on a thread (native async, or no I/O).
    native_async: bool = False
    #: True when :meth:`aapply` applies on the event loop whenever that waits for nothing
    #: and only otherwise in a thread (SQLite's): deferred mode enqueues through it.
    loop_first: bool = False
    #: True when every call is answered in this process without I/O (the memory ledger):
    #: the receiver may make it from whichever thread it is in at no cost.
    in_process: bool = False
    #: True when lease deadlines come from the store server's own clock.
    server_time: bool = False
    #: True when each thread has its own connection, which may sit in that thread's open
    #: transaction (Django's): a record's claim and its run then share one thread, or the
    #: run could not see the claim it has to complete.
    thread_bound: bool = False

    # Primitives ------------------------------------------------------------------

    @abstractmethod
    def apply(self, change: Change) -> Applied:
        """Apply ``change.transition`` to its record if, atomically, the record is in one
        of the transition's sources."""

    @abstractmethod
    def due(self, limit: int) -> Sequence[str]:
        """Return up to ``limit`` keys a runner may lease now (due or expired), oldest first."""

    @abstractmethod
    def get(self, key: str) -> Record | None:
        """Return one record by key."""

    def known_done(self, key: str) -> bool:
        """Tell, without I/O, whether ``key``'s record is done; False when unknown here.

        A hint for answering a duplicate before parsing it (the in-process ledger knows);
        the claim stays the authority, so a store that would need a round trip says False.
        """
        return False

    @abstractmethod
    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        """Return records, newest first, optionally of one state."""

    @abstractmethod
    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        """Delete records in ``states`` untouched for ``older_than`` seconds; return how many.

        Batched, so no statement holds the store for long.
        """

    @abstractmethod
    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        """Add ``by`` to a shared counter; at ``limit`` or more reset it and return True."""

    def stats(self, counters: Collection[str] = ()) -> Stats:
        """Count records by state and read ``counters``; generic, through :meth:`records`.

        Stores override it with cheap native queries. This fallback reads at most
        :data:`STATS_SCAN` records per state, judges ages by this host's clock and
        cannot read counters (they are left out of ``streaks``).
        """
        import time

        counts: dict[State, int] = {}
        oldest: float | None = None
        exact = True
        for state in (State.PENDING, State.PROCESSING, State.FAILED, State.DEAD):
            found = self.records(state, limit=STATS_SCAN)
            counts[state] = len(found)
            exact = exact and len(found) < STATS_SCAN
            if state is State.PENDING and found:
                oldest = max(0.0, time.time() - min(r.updated_at for r in found))
        return Stats(
            counts[State.PENDING],
            oldest,
            counts[State.DEAD],
            counts[State.FAILED],
            counts[State.PROCESSING],
            {},
            exact,
        )

    def transaction(self) -> AbstractContextManager[Any]:
        """Open the unit of work around handlers and the done mark; yields ``delivery.transaction``.

        A transactional store commits the handlers' own writes and the done mark
        together, and rolls both back when a handler raises or the lease was lost.
        """
        return nullcontext()

    def atransaction(self) -> AbstractAsyncContextManager[Any]:
        """Async twin of :meth:`transaction`."""
        return nullcontext()

    def check_transaction(self, tx: Any) -> None:  # noqa: B027 - optional hook
        """Raise if the handlers left ``tx`` unusable (an SQL error they caught).

        The error is the handlers': the receiver treats it as a handler failure, never
        as the store being unavailable.
        """

    def run_async(self, coro: Any) -> Any:
        """Run an async handler's coroutine from the thread that holds :meth:`transaction`.

        Stores whose transactions belong to a thread (Django) override this so that
        the handler's database calls join that thread's transaction.
        """
        from .runner import run_coroutine

        return run_coroutine(coro)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def close_thread(self) -> None:  # noqa: B027 - optional hook
        """Release what this thread holds, after a run in a pooled or background thread.

        Stores whose connections belong to a thread (Django) close this thread's one the
        way a request's end would, so pooled threads never keep connections open.
        """

    async def aapply(self, change: Change) -> Applied:
        return await asyncio.to_thread(self.apply, change)

    async def adue(self, limit: int) -> Sequence[str]:
        return await asyncio.to_thread(self.due, limit)

    async def abump(self, counter: str, limit: int, by: int = 1) -> bool:
        return await asyncio.to_thread(self.bump, counter, limit, by)

    async def aprune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        return await asyncio.to_thread(self.prune, older_than, states)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Named operations: the machine's vocabulary, for every backend -----------------

    def claim(self, entry: Entry, *, lease: float) -> Claim:
        """Record ``entry`` and take its lease (inline mode)."""
        return self._arrive(CLAIM, entry, lease)

    def enqueue(self, entry: Entry) -> Claim:
        """Record ``entry`` for a runner (deferred mode); CLAIMED never comes back."""
        return self._arrive(ENQUEUE, entry, 0.0)

    def _arrive(self, transition: Transition, entry: Entry, lease: float) -> Claim:
        for _ in range(3):  # the row may change between the attempt and the look
            done = self.apply(Change(transition, entry.key, entry=entry, lease=lease))
            claim = _claim(transition, done)
            if claim is not None:
                return claim
        return Claim(ClaimStatus.IN_PROGRESS)

    def lease_due(self, *, lease: float, limit: int = 10) -> list[tuple[Record, Claim]]:
        """Lease up to ``limit`` due or abandoned records for a runner."""
        leased = []
        for key in self.due(limit) if limit > 0 else ():
            done = self.apply(Change(LEASE, key, lease=lease))
            if done.ok and done.record is not None:  # another runner may have won it
                leased.append((done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)))
        return leased

    def lease_one(self, key: str, *, lease: float) -> tuple[Record, Claim] | None:
        """Lease record ``key`` if it is due or abandoned (a task queue's pointer to it).

        None when it is not: done, in progress under a live lease, waiting out a retry
        delay, dead, or gone. A pointer delivered twice therefore runs the record once.
        """
        done = self.apply(Change(LEASE, key, lease=lease))
        if not done.ok or done.record is None:
            return None
        return done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)

    def rerun(self, key: str, *, lease: float) -> tuple[Record, Claim] | None:
        """Lease a failed or dead record to run it now; None when it is neither."""
        done = self.apply(Change(RERUN, key, lease=lease))
        if not done.ok or done.record is None:
            return None
        return done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)

    def renew(self, key: str, token: str, *, lease: float) -> bool:
        """Extend the lease ``token`` holds; False when it was lost."""
        return self.apply(Change(RENEW, key, token=token, lease=lease)).ok

    def complete(self, key: str, token: str, *, counter: str = "") -> bool:
        """Mark done while ``token`` holds the lease, ending ``counter``'s streak."""
        return self.apply(Change(COMPLETE, key, token=token, counter=counter)).ok

    def fail(self, key: str, token: str, error: str) -> bool:
        """Settle a failed run; a provider retry or a rerun claims it again."""
        return self.apply(Change(FAIL, key, token=token, error=error)).ok

    def retry(self, key: str, token: str, error: str, *, delay: float) -> bool:
        """Settle a failed run as pending again from ``delay`` seconds on."""
        return self.apply(Change(RETRY, key, token=token, error=error, delay=delay)).ok

    def bury(self, key: str, token: str, error: str) -> bool:
        """Settle a failed run as dead: out of attempts, kept for replay."""
        return self.apply(Change(BURY, key, token=token, error=error)).ok

    def replay(self, key: str) -> bool:
        """Put a failed or dead record back to pending; return whether it was one."""
        return self.apply(Change(REPLAY, key)).ok

    # Async twins of the named operations -----------------------------------------

    async def aclaim(self, entry: Entry, *, lease: float) -> Claim:
        return await self._aarrive(CLAIM, entry, lease)

    async def aenqueue(self, entry: Entry) -> Claim:
        return await self._aarrive(ENQUEUE, entry, 0.0)

    async def _aarrive(self, transition: Transition, entry: Entry, lease: float) -> Claim:
        for _ in range(3):
            done = await self.aapply(Change(transition, entry.key, entry=entry, lease=lease))
            claim = _claim(transition, done)
            if claim is not None:
                return claim
        return Claim(ClaimStatus.IN_PROGRESS)

    async def alease_due(self, *, lease: float, limit: int = 10) -> list[tuple[Record, Claim]]:
        leased = []
        for key in await self.adue(limit) if limit > 0 else ():
            done = await self.aapply(Change(LEASE, key, lease=lease))
            if done.ok and done.record is not None:
                leased.append((done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)))
        return leased

    async def alease_one(self, key: str, *, lease: float) -> tuple[Record, Claim] | None:
        done = await self.aapply(Change(LEASE, key, lease=lease))
        if not done.ok or done.record is None:
            return None
        return done.record, Claim(ClaimStatus.CLAIMED, done.attempts, done.token)

    async def astats(self, counters: Collection[str] = ()) -> Stats:
        return await asyncio.to_thread(self.stats, counters)

    async def arenew(self, key: str, token: str, *, lease: float) -> bool:
        return (await self.aapply(Change(RENEW, key, token=token, lease=lease))).ok

    async def acomplete(self, key: str, token: str, *, counter: str = "") -> bool:
        return (await self.aapply(Change(COMPLETE, key, token=token, counter=counter))).ok

    async def afail(self, key: str, token: str, error: str) -> bool:
        return (await self.aapply(Change(FAIL, key, token=token, error=error))).ok

    async def aretry(self, key: str, token: str, error: str, *, delay: float) -> bool:
        return (await self.aapply(Change(RETRY, key, token=token, error=error, delay=delay))).ok

    async def abury(self, key: str, token: str, error: str) -> bool:
        return (await self.aapply(Change(BURY, key, token=token, error=error))).ok


def _claim(transition: Transition, done: Applied) -> Claim | None:
    if done.ok:
        if transition.lease:
            return Claim(ClaimStatus.CLAIMED, done.attempts, done.token)
        return Claim(ClaimStatus.PENDING, queued=True)
    status = claim_status(done.found)
    return None if status is None else Claim(status)


def admits(
    transition: Transition,
    state: State | None,
    *,
    now: float,
    lease_until: float | None,
    available_at: float | None,
    held_by: str | None,
    token: str,
) -> bool:
    """Tell whether a row matches one of ``transition``'s sources (for stores in Python).

    SQL and Lua stores express the same test in their own language, generated from a
    transition's sources with the same meanings.
    """
    for source in transition.sources:
        if source is Source.ABSENT:
            if state is None:
                return True
        elif state is None:
            continue
        elif source is Source.DUE:
            if state is State.PENDING and (available_at is None or available_at <= now):
                return True
        elif source is Source.EXPIRED:
            if state is State.PROCESSING and (lease_until or 0.0) <= now:
                return True
        elif source is Source.HELD:
            if state is State.PROCESSING and token and held_by == token:
                return True
        elif state.value == source.value:
            return True
    return False
