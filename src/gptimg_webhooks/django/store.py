"""The Django ORM ledger: ``django://`` (the ``default`` database) or ``django://<alias>``.

Transactional: the receiver runs a delivery's handlers and its done mark inside one
``transaction.atomic(using=alias)`` block, so a handler's own ORM writes and the done mark
commit together, or roll back together when a handler raises.

Claims never join a caller's transaction on purpose: the view is exempt from
``ATOMIC_REQUESTS`` so a claim commits at once and concurrent duplicates see it. Every
state change is one conditional ``UPDATE`` (compare-and-set on state, lease and fencing
token), which PostgreSQL and SQLite both run atomically; ``lease_pending`` uses
``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.db import DatabaseError, IntegrityError, connections, transaction
from django.db.models import F, Q, QuerySet

from .._core.errors import ConfigurationError, StoreUnavailable
from .._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store
from ..stores.memory import new_token
from .models import Counter, Delivery

__all__ = ["DjangoStore"]

_T = TypeVar("_T")
_FINISHED = (State.DONE.value, State.FAILED.value, State.DEAD.value)
_FAILURES = "failures"


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
    )


class DjangoStore(Store):
    """A ledger in the tables of this app's migrations, on one database alias."""

    schemes = ("django",)
    transactional = True
    # Django's transactions belong to a thread: the async driver runs handlers and the
    # done mark together in one worker thread.
    async_transactions = False

    def __init__(self, alias: str = "default") -> None:
        if alias not in connections.settings:
            known = ", ".join(sorted(connections.settings))
            raise ConfigurationError(
                f"django://{alias}: no database {alias!r} in DATABASES (have: {known})"
            )
        self.alias = alias

    @classmethod
    def from_url(cls, url: str) -> DjangoStore:
        return cls(urlsplit(url).netloc or "default")

    def __repr__(self) -> str:
        return f"DjangoStore({self.alias!r})"

    @property
    def _rows(self) -> QuerySet[Delivery]:
        return Delivery.objects.using(self.alias)

    @contextmanager
    def _db(self) -> Iterator[None]:
        try:
            yield
        except DatabaseError as exc:
            conn = connections[self.alias]
            if not conn.in_atomic_block:
                # Drop a broken connection now rather than failing every later call on it.
                conn.close_if_unusable_or_obsolete()
            raise StoreUnavailable(f"Django ledger on {self.alias!r}: {exc}") from exc

    def _insert(self, **fields: Any) -> bool:
        """Insert a new record; False when its key exists already."""
        try:
            # A savepoint when a caller's transaction is open, so a conflict cannot
            # poison it; plain autocommit otherwise (one round trip).
            if connections[self.alias].in_atomic_block:
                with transaction.atomic(using=self.alias):
                    self._rows.create(**fields)
            else:
                self._rows.create(**fields)
        except IntegrityError:
            return False
        return True

    def claim(self, entry: Entry, *, now: float, lease: float, defer: bool = False) -> Claim:
        new = {
            "key": entry.key,
            "delivery_id": entry.delivery_id,
            "event": entry.event,
            "generation_id": entry.generation_id,
            "body": entry.body,
            "created_at": now,
            "updated_at": now,
        }
        rows = self._rows.filter(key=entry.key)
        with self._db():
            for _ in range(3):  # the record may change state between two statements
                if defer:
                    if self._insert(state=State.PENDING.value, attempts=0, **new):
                        return Claim(ClaimStatus.PENDING)
                    if rows.filter(state=State.FAILED.value).update(
                        state=State.PENDING.value, token=None, lease_until=None, updated_at=now
                    ):
                        return Claim(ClaimStatus.PENDING)
                else:
                    token = new_token()
                    lease_until = now + lease
                    if self._insert(
                        state=State.PROCESSING.value,
                        attempts=1,
                        token=token,
                        lease_until=lease_until,
                        **new,
                    ):
                        return Claim(ClaimStatus.CLAIMED, 1, token)
                    claimable = Q(state=State.FAILED.value) | Q(
                        state=State.PROCESSING.value, lease_until__lte=now
                    )
                    if rows.filter(claimable).update(
                        state=State.PROCESSING.value,
                        attempts=F("attempts") + 1,
                        token=token,
                        lease_until=lease_until,
                        updated_at=now,
                    ):
                        attempts = rows.filter(token=token).values_list("attempts", flat=True)
                        found = attempts.first()
                        if found is None:  # expired and taken over in between
                            return Claim(ClaimStatus.IN_PROGRESS)
                        return Claim(ClaimStatus.CLAIMED, found, token)
                state = rows.values_list("state", flat=True).first()
                if state == State.DONE.value:
                    return Claim(ClaimStatus.DONE)
                if state == State.DEAD.value:
                    return Claim(ClaimStatus.DEAD)
                if state == State.PENDING.value or (defer and state is not None):
                    return Claim(ClaimStatus.PENDING)
                if state == State.PROCESSING.value:
                    return Claim(ClaimStatus.IN_PROGRESS)
                # Failed again or pruned since the statements above: try once more.
        return Claim(ClaimStatus.IN_PROGRESS)

    def complete(self, key: str, token: str, *, now: float) -> bool:
        with self._db():
            done: int = self._rows.filter(
                key=key, token=token, state=State.PROCESSING.value
            ).update(
                state=State.DONE.value,
                body=None,
                error=None,
                token=None,
                lease_until=None,
                updated_at=now,
            )
            if done:
                Counter.objects.using(self.alias).filter(name=_FAILURES).exclude(value=0).update(
                    value=0
                )
        return done == 1

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
        with self._db():
            changed: int = self._rows.filter(
                key=key, token=token, state=State.PROCESSING.value
            ).update(
                state=state.value,
                error=error,
                token=None,
                lease_until=None,
                available_at=retry_at,
                updated_at=now,
            )
        return changed == 1

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

    def replay(self, key: str, *, now: float) -> bool:
        with self._db():
            changed: int = self._rows.filter(
                key=key, state__in=(State.FAILED.value, State.DEAD.value)
            ).update(state=State.PENDING.value, available_at=None, updated_at=now)
        return changed == 1

    def prune(self, before: float) -> int:
        with self._db():
            count, _ = self._rows.filter(state__in=_FINISHED, updated_at__lt=before).delete()
        return int(count)

    def record_failure(self, limit: int) -> bool:
        counters = Counter.objects.using(self.alias).filter(name=_FAILURES)
        with self._db(), transaction.atomic(using=self.alias):
            # The UPDATE takes the row's write lock first, so the read below is ours alone.
            if not counters.update(value=F("value") + 1):
                Counter.objects.using(self.alias).bulk_create(
                    [Counter(name=_FAILURES, value=0)], ignore_conflicts=True
                )
                counters.update(value=F("value") + 1)
            count = counters.values_list("value", flat=True).get()
            if count > limit:
                counters.update(value=0)
                return True
        return False

    def lease_pending(
        self, *, now: float, lease: float, limit: int = 10
    ) -> Sequence[tuple[Record, Claim]]:
        due = Q(state=State.PENDING.value) & (
            Q(available_at__isnull=True) | Q(available_at__lte=now)
        ) | Q(state=State.PROCESSING.value, lease_until__lte=now)
        leased: list[tuple[Record, Claim]] = []
        skip_locked = connections[self.alias].features.has_select_for_update_skip_locked
        # Row locks where the database has them (PostgreSQL); SQLite has a single writer
        # and a read-then-write transaction there could only fail on the lock upgrade.
        block: AbstractContextManager[Any] = (
            transaction.atomic(using=self.alias) if skip_locked else nullcontext()
        )
        with self._db(), block:
            candidates = self._rows.filter(due).order_by("updated_at")
            if skip_locked:
                candidates = candidates.select_for_update(skip_locked=True)
            for key in list(candidates.values_list("key", flat=True)[:limit]):
                token = new_token()
                # Compare-and-set again: without row locks (SQLite) another worker may
                # have leased it since the SELECT.
                if self._rows.filter(due, key=key).update(
                    state=State.PROCESSING.value,
                    attempts=F("attempts") + 1,
                    token=token,
                    lease_until=now + lease,
                    available_at=None,
                    updated_at=now,
                ):
                    rec = _record(self._rows.get(key=key))
                    leased.append((rec, Claim(ClaimStatus.CLAIMED, rec.attempts, token)))
        return leased

    def lease_again(self, key: str, *, now: float, lease: float) -> tuple[Record, Claim] | None:
        """Lease a failed or dead record for a local replay; None when it is neither."""
        token = new_token()
        with self._db():
            if not self._rows.filter(
                key=key, state__in=(State.FAILED.value, State.DEAD.value)
            ).update(
                state=State.PROCESSING.value,
                attempts=F("attempts") + 1,
                token=token,
                lease_until=now + lease,
                available_at=None,
                updated_at=now,
            ):
                return None
            rec = _record(self._rows.get(key=key))
        return rec, Claim(ClaimStatus.CLAIMED, rec.attempts, token)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """Open ``transaction.atomic(using=alias)``; yield it as ``delivery.transaction``."""
        block = transaction.atomic(using=self.alias)
        with self._db():
            block.__enter__()
        try:
            yield block
        except BaseException:
            block.__exit__(*sys.exc_info())
            raise
        with self._db():
            block.__exit__(None, None, None)  # COMMIT: handler writes and the done mark

    def close(self) -> None:
        """Close this thread's connection, unless a transaction is open on it."""
        conn = connections[self.alias]
        if not conn.in_atomic_block:
            conn.close()
