"""The Django ORM ledger: ``django://`` (the ``default`` database) or ``django://<alias>``.

Transactional: the receiver runs a delivery's handlers and its done mark inside one
``transaction.atomic(using=alias)`` block, so a handler's own ORM writes (sync, or async
through :meth:`DjangoStore.run_async`) and the done mark commit together, or roll back
together when a handler raises.

Arrivals never join a caller's transaction on purpose: the view is exempt from
``ATOMIC_REQUESTS`` so a claim commits at once and concurrent duplicates see it. Every
state change is one conditional ``UPDATE`` (compare-and-set), its ``WHERE`` and ``SET``
generated from the :class:`~gptimg_webhooks._core.ledger.Transition`; PostgreSQL and
SQLite both run it atomically. "Now" is PostgreSQL's own clock inside the statements
there (``server_time``), the host's ``time.time()`` on other databases.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from functools import partial, reduce
from operator import or_
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import Expression, F, FloatField, Q, QuerySet
from django.db.models.expressions import RawSQL

from .._core.errors import ConfigurationError, StoreUnavailable, TransactionAborted
from .._core.ledger import LEASE, Applied, Change, Entry, Record, Source, State, Store, Transition
from ..stores.memory import new_token
from .models import Counter, Delivery

__all__ = ["DjangoStore"]

#: Rows one pruning DELETE removes: each batch is its own short write.
_PRUNE_BATCH = 500
#: libpq's PQTRANS_INERROR, the same number in psycopg 2 and 3.
_PQTRANS_INERROR = 3
#: A time as the database computes it (PostgreSQL) or as this host gives it.
_Now = Expression | float

#: Connections a forked child inherited; kept referenced so that it never closes them,
#: which would end its parent's database sessions.
_inherited: list[Any] = []


def _detach_inherited_connections() -> None:
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            _inherited.append(conn.connection)
            conn.connection = None


os.register_at_fork(after_in_child=_detach_inherited_connections)


def _record(row: Delivery) -> Record:
    return Record(
        row.key,
        State(row.state),
        row.delivery_id,
        row.event,
        row.generation_id,
        row.attempts,
        bytes(row.body) if row.body is not None else None,
        row.error,
        row.created_at,
        row.updated_at,
        row.lease_until,
        row.available_at,
        row.traceparent,
    )


#: What a source with a condition beyond the state means as a row filter, given the
#: store's now and the caller's token (None: it cannot match, e.g. HELD without a token).
#: The others (FAILED, DEAD) are their state alone.
_SOURCES: dict[Source, Callable[[_Now, str], Q | None]] = {
    Source.DUE: lambda now, token: (
        Q(state=State.PENDING.value) & (Q(available_at__isnull=True) | Q(available_at__lte=now))
    ),
    Source.EXPIRED: lambda now, token: (
        Q(state=State.PROCESSING.value) & (Q(lease_until__isnull=True) | Q(lease_until__lte=now))
    ),
    Source.HELD: lambda now, token: Q(state=State.PROCESSING.value, token=token) if token else None,
}


def _where(sources: Collection[Source], now: _Now, token: str = "") -> Q | None:
    """Translate the existing-row sources into one filter; None when none can match."""
    parts = [
        _SOURCES[s](now, token) if s in _SOURCES else Q(state=State(s.value).value)
        for s in sources
        if s is not Source.ABSENT
    ]
    found = [q for q in parts if q is not None]
    return reduce(or_, found) if found else None


def _changes(
    t: Transition,
    now: _Now,
    *,
    token: str | None,
    lease: float,
    error: str | None,
    delay: float,
    attempts: Any,
) -> dict[str, Any]:
    """Translate a transition's flags into the columns it sets.

    ``token`` is the new one when ``t.lease``; ``attempts`` is the leased row's new
    count (``F("attempts") + 1`` for an UPDATE, 1 for an INSERT).
    """
    fields: dict[str, Any] = {"state": t.target.value, "updated_at": now}
    if t.lease:
        fields |= {"attempts": attempts, "token": token, "lease_until": now + lease}
    elif t.extend:
        fields["lease_until"] = now + lease
    else:
        fields |= {"token": None, "lease_until": None}
    fields["available_at"] = now + delay if t.delay else None
    if t.error:
        fields["error"] = error
    if t.clear:
        fields |= {"body": None, "error": None}
    return fields


class DjangoStore(Store):
    """A ledger in the tables of this app's migrations, on one database alias."""

    schemes = ("django",)
    transactional = True
    thread_bound = True
    # Django's transactions belong to a thread: the async driver runs handlers and the
    # done mark together in one worker thread, and run_async keeps async handlers there.
    async_transactions = False

    def __init__(self, alias: str = "default") -> None:
        if alias not in connections.settings:
            known = ", ".join(sorted(connections.settings))
            raise ConfigurationError(
                f"django://{alias}: no database {alias!r} in DATABASES (have: {known})"
            )
        self.alias = alias
        self._postgres = connections[alias].vendor == "postgresql"
        # PostgreSQL computes "now" inside each statement; elsewhere it is this host's.
        self.server_time = self._postgres

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> DjangoStore:
        """Open ``django://<alias>``; migrations own the tables, so ``create`` changes nothing."""
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(f"{url!r}: a django:// URL names only a database alias")
        return cls(parts.netloc or "default")

    def __repr__(self) -> str:
        return f"DjangoStore({self.alias!r})"

    @property
    def _rows(self) -> QuerySet[Delivery]:
        return Delivery.objects.using(self.alias)

    @property
    def _counters(self) -> QuerySet[Counter]:
        return Counter.objects.using(self.alias)

    def _now(self) -> _Now:
        if self._postgres:
            return RawSQL(
                "extract(epoch from statement_timestamp())::float8", (), output_field=FloatField()
            )
        return time.time()

    @contextmanager
    def _db(self) -> Iterator[None]:
        """Run the store's own statements: their database errors are StoreUnavailable."""
        conn = connections[self.alias]
        if conn.in_atomic_block:
            self.check_transaction(None)  # a handler's broken transaction is not ours
        try:
            yield
        except DatabaseError as exc:
            if not conn.in_atomic_block:
                # Drop a broken connection now rather than failing every later call on it.
                conn.close_if_unusable_or_obsolete()
            raise StoreUnavailable(f"Django ledger on {self.alias!r}: {exc}") from exc

    # Primitives ------------------------------------------------------------------

    def apply(self, change: Change) -> Applied:
        transition, key, entry, token, lease, error, delay, counter = change
        now = self._now()
        fresh = new_token() if transition.lease else None
        sets = partial(
            _changes, transition, now, token=fresh, lease=lease, error=error, delay=delay
        )
        # The streak's reset commits with the state change or not at all.
        unit: AbstractContextManager[Any] = (
            transaction.atomic(using=self.alias, savepoint=False)
            if transition.ends_streak and counter
            else nullcontext()
        )
        with self._db(), unit:
            inserted = transition.inserts and entry is not None and self._insert(entry, now, sets)
            done = inserted
            if not done:
                where = _where(transition.sources, now, token)
                rows = self._rows.filter(Q(key=key) & where) if where is not None else None
                done = rows is not None and bool(rows.update(**sets(attempts=F("attempts") + 1)))
            if not done:
                found = self._rows.filter(key=key).values_list("state", flat=True).first()
                return Applied(False, State(found) if found is not None else None)
            if transition.ends_streak and counter:
                self._counters.filter(name=counter).exclude(value=0).update(value=0)
            if inserted and not transition.returns_record:
                return Applied(True, transition.target, int(transition.lease), fresh or "")
            if not (transition.lease or transition.returns_record):
                # Callers read attempts and token of leasing transitions only: no read-back.
                return Applied(True, transition.target, token=token if transition.extend else "")
            # Read our own lease back by its new token: between the UPDATE and this read
            # a lease of ~0 s may have been taken over, and then it is not ours.
            mine = self._rows.filter(key=key, **({"token": fresh} if fresh else {})).first()
        if mine is None:
            return Applied(False, State.PROCESSING if fresh else None)
        record = _record(mine) if transition.returns_record else None
        return Applied(True, transition.target, mine.attempts, mine.token or "", record)

    def _insert(self, entry: Entry, now: _Now, sets: Callable[..., dict[str, Any]]) -> bool:
        """Insert ``entry``'s row as ``sets`` leaves it; False when its key exists already."""
        fields = {
            "key": entry.key,
            "delivery_id": entry.delivery_id,
            "event": entry.event,
            "generation_id": entry.generation_id,
            "body": entry.body,
            "traceparent": entry.traceparent,
            "attempts": 0,
            "error": None,
            "created_at": now,
        }
        row = Delivery(**(fields | sets(attempts=1)))
        try:
            # A savepoint when a caller's transaction is open, so a conflict cannot
            # poison it; plain autocommit otherwise (one round trip).
            block: AbstractContextManager[Any] = (
                transaction.atomic(using=self.alias)
                if connections[self.alias].in_atomic_block
                else nullcontext()
            )
            with block:
                row.save(using=self.alias, force_insert=True)
        except IntegrityError:
            return False
        return True

    def due(self, limit: int) -> Sequence[str]:
        where = _where(LEASE.sources, self._now())
        conn = connections[self.alias]
        skip_locked = conn.features.has_select_for_update_skip_locked
        # Skip rows another runner's open transaction holds (PostgreSQL); SQLite has one
        # writer, and a read-then-write transaction there could only fail on the upgrade.
        block: AbstractContextManager[Any] = (
            transaction.atomic(using=self.alias) if skip_locked else nullcontext()
        )
        found = self._rows.filter(where).order_by("updated_at")
        if skip_locked:
            found = found.select_for_update(skip_locked=True)
        with self._db(), block:
            return list(found.values_list("key", flat=True)[: max(limit, 0)])

    def get(self, key: str) -> Record | None:
        with self._db():
            row = self._rows.filter(key=key).first()
        return _record(row) if row is not None else None

    def records(self, state: State | None = None, limit: int = 100) -> Sequence[Record]:
        rows = self._rows.order_by("-updated_at")
        if state is not None:
            rows = rows.filter(state=state.value)
        with self._db():
            return [_record(r) for r in rows[:limit]]

    def prune(self, older_than: float, states: Collection[State] = (State.DONE,)) -> int:
        old = self._rows.filter(
            state__in=[s.value for s in states], updated_at__lt=self._now() - older_than
        )
        total = 0
        with self._db():
            while True:  # ends: every round deletes a batch, or finds less than one
                batch = old.order_by().values("key")[:_PRUNE_BATCH]
                count, _ = self._rows.filter(key__in=batch).delete()
                total += int(count)
                if count < _PRUNE_BATCH:
                    return total

    def bump(self, counter: str, limit: int, by: int = 1) -> bool:
        counters = self._counters.filter(name=counter)
        with self._db(), transaction.atomic(using=self.alias):
            # The UPDATE takes the row's write lock first, so the read below is ours alone.
            if not counters.update(value=F("value") + by):
                self._counters.bulk_create([Counter(name=counter, value=0)], ignore_conflicts=True)
                counters.update(value=F("value") + by)
            if counters.values_list("value", flat=True).get() >= limit:
                counters.update(value=0)
                return True
        return False

    # Transactions ----------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Open ``transaction.atomic(using=alias)``; yield it as ``delivery.transaction``.

        An exception from the body propagates unchanged after the rollback; only the
        opening and the COMMIT are the store's (StoreUnavailable). A body that left the
        transaction broken without raising is rolled back as TransactionAborted.
        """
        block = transaction.atomic(using=self.alias)
        with self._db():
            block.__enter__()
        try:
            yield block
            self.check_transaction(block)
        except BaseException:
            # A failed rollback closes the connection (Django does); keep the body's error.
            with suppress(DatabaseError):
                block.__exit__(*sys.exc_info())
            raise
        with self._db():
            block.__exit__(None, None, None)  # COMMIT: handler writes and the done mark

    def check_transaction(self, tx: Any) -> None:
        """Raise TransactionAborted when a handler's caught SQL error broke the transaction."""
        conn = connections[self.alias]
        if conn.needs_rollback:
            raise TransactionAborted(
                "a handler's database error broke the ledger's transaction (it was caught)"
            )
        if self._postgres and conn.connection is not None:
            info = getattr(conn.connection, "info", None)
            if int(getattr(info, "transaction_status", 0)) == _PQTRANS_INERROR:
                raise TransactionAborted(
                    "a handler's SQL error aborted the ledger's PostgreSQL transaction"
                )

    def run_async(self, coro: Any) -> Any:
        """Run an async handler so its ORM calls join this thread's open transaction.

        ``async_to_sync`` runs the coroutine on a loop of its own while this thread
        serves the coroutine's thread-sensitive ``sync_to_async`` calls (``acreate``,
        ``aget``...): they use this thread's connection, inside the atomic block.
        """

        async def wait() -> Any:
            return await coro

        return async_to_sync(wait)()

    def close_thread(self) -> None:
        """Close this thread's connection when Django would at a request's end (CONN_MAX_AGE)."""
        conn = connections[self.alias]
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()

    def close(self) -> None:
        """Close this thread's connection, unless a transaction is open on it."""
        conn = connections[self.alias]
        if not conn.in_atomic_block:
            conn.close()
