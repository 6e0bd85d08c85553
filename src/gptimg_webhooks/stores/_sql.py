"""The SQL of the SQLite and PostgreSQL ledgers, generated once from the state machine.

Every :class:`~gptimg_webhooks._core.ledger.Transition` becomes one compare-and-set
statement: its sources become the WHERE clause, its flags the SET list, and a transition
that may insert becomes an ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE``. A
:class:`Dialect` holds what differs between the two databases: placeholders, where "now"
comes from, names and types, and whether the streak reset rides in the same statement.
Statements are built on first use per (dialect, transition) and cached.

Row alias ``r`` is the record as it was before the statement. The table layout is the
one earlier releases created, plus the columns of :data:`ADDED`: :func:`upgrade` adds
those to an older table, so existing ledgers keep working.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .._core.ledger import LEASE, Applied, Change, Record, Source, State, Transition
from .memory import new_token

__all__ = [
    "ADDED",
    "Apply",
    "Dialect",
    "applied",
    "apply_params",
    "apply_statement",
    "bump_statement",
    "bumped",
    "columns_statement",
    "ddl",
    "drop",
    "due_statement",
    "get_statement",
    "lease_many_statement",
    "postgres",
    "prune_statement",
    "records_statement",
    "sqlite",
    "upgrade",
]

_COLUMNS = Record.COLUMNS

#: Columns added to the records table after its first release, with their type (the
#: :class:`Dialect` attribute naming it). New tables have them; :func:`upgrade` adds them
#: to older ones. ``traceparent``: the receiving span's W3C trace context.
ADDED: dict[str, str] = {"traceparent": "text"}


def _quote(name: str) -> str:
    """Quote a (possibly schema-qualified) name; callers validated it already."""
    return ".".join(f'"{part}"' for part in name.split("."))


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells the ledger's statements."""

    name: str
    #: The records table and the counters table, unquoted, optionally schema-qualified.
    table: str
    counters: str
    #: A named placeholder, ``{}`` standing for the name.
    placeholder: str
    #: The store's "now", in epoch seconds; ``:now`` when the caller binds it.
    now: str
    text: str
    integer: str
    real: str
    blob: str
    big: str
    #: Reset a streak counter in the same statement as COMPLETE (a CTE); else the
    #: caller runs :attr:`Apply.reset` in the same transaction.
    streak_in_statement: bool
    #: Rows per DELETE when pruning: each batch is a short transaction of its own.
    prune_batch: int
    #: A fresh token per row of ``r``, made by the server (for many leases at once).
    row_token: str = ""
    #: A query listing the records table's column names; ``{bare}``: its unqualified
    #: name, ``{quoted}``: its quoted, possibly schema-qualified one.
    table_columns: str = ""

    def p(self, name: str) -> str:
        return self.placeholder.format(name)

    @property
    def binds_now(self) -> bool:
        return self.now == self.p("now")


def sqlite() -> Dialect:
    """SQLite: the host's clock, bound per statement (one host shares the file)."""
    return Dialect(
        name="sqlite",
        table="gptimg_webhook_deliveries",
        counters="gptimg_webhook_counters",
        placeholder=":{}",
        now=":now",
        text="TEXT",
        integer="INTEGER",
        real="REAL",
        blob="BLOB",
        big="INTEGER",
        streak_in_statement=False,
        prune_batch=1000,
        table_columns="SELECT name FROM pragma_table_info('{bare}')",
    )


def postgres(table: str) -> Dialect:
    """PostgreSQL: the server's clock, so no client's clock can break a lease."""
    return Dialect(
        name="postgres",
        table=table,
        counters=f"{table}_counters",
        placeholder="%({})s",
        now="CAST(extract(epoch FROM statement_timestamp()) AS double precision)",
        text="text",
        integer="integer",
        real="double precision",
        blob="bytea",
        big="bigint",
        streak_in_statement=True,
        prune_batch=5000,
        # Fencing tokens need uniqueness, not secrecy: random() is enough.
        row_token="md5(random()::text || r.key)",  # noqa: S106 - SQL, not a secret
        # The table the unqualified name resolves to on the search path, as DDL does.
        table_columns=(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('{quoted}') "
            "AND attnum > 0 AND NOT attisdropped"
        ),
    )


# Schema ---------------------------------------------------------------------------


def ddl(d: Dialect) -> list[str]:
    """Return the statements that create the schema if it is missing."""
    schema, _, bare = d.table.rpartition(".")
    t, c = _quote(d.table), _quote(d.counters)
    statements = [f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}"] if schema else []
    added = "".join(f",\n            {name} {getattr(d, kind)}" for name, kind in ADDED.items())
    return [
        *statements,
        f"""CREATE TABLE IF NOT EXISTS {t} (
            key {d.text} PRIMARY KEY,
            state {d.text} NOT NULL,
            delivery_id {d.text} NOT NULL,
            event {d.text},
            generation_id {d.text},
            attempts {d.integer} NOT NULL DEFAULT 0,
            token {d.text},
            lease_until {d.real},
            available_at {d.real},
            body {d.blob},
            error {d.text},
            created_at {d.real} NOT NULL,
            updated_at {d.real} NOT NULL{added})""",
        f"CREATE INDEX IF NOT EXISTS {_quote(bare + '_state')} ON {t} (state, updated_at)",
        # Counter names are the receiver's guard keys: ~200 characters; text holds them.
        f"CREATE TABLE IF NOT EXISTS {c} (name {d.text} PRIMARY KEY, value {d.big} NOT NULL)",
    ]


def columns_statement(d: Dialect) -> str:
    """List the records table's columns, one name per row (none when it is missing)."""
    _, _, bare = d.table.rpartition(".")
    return d.table_columns.format(bare=bare, quoted=_quote(d.table))


def upgrade(d: Dialect, present: Collection[str]) -> list[str]:
    """Return the statements adding the :data:`ADDED` columns missing from ``present``.

    Run them under the lock that serialises schema changes (SQLite's write lock,
    PostgreSQL's advisory lock) after reading ``present`` under that same lock, so that
    processes starting together add each column once.
    """
    t = _quote(d.table)
    return [
        f"ALTER TABLE {t} ADD COLUMN {name} {getattr(d, kind)}"
        for name, kind in ADDED.items()
        if name not in present
    ]


def drop(d: Dialect) -> list[str]:
    """Return the statements that drop the schema's tables."""
    return [f"DROP TABLE IF EXISTS {_quote(name)}" for name in (d.table, d.counters)]


# The machine ----------------------------------------------------------------------


def _where(d: Dialect, sources: Collection[Source]) -> str:
    """Say in SQL that row ``r`` matches one of ``sources`` (ABSENT is the INSERT's)."""
    now = d.now
    tests = []
    for source in sorted(sources, key=lambda s: s.value):
        if source is Source.ABSENT:
            continue
        if source is Source.DUE:
            tests.append(
                f"(r.state = '{State.PENDING.value}' "
                f"AND (r.available_at IS NULL OR r.available_at <= {now}))"
            )
        elif source is Source.EXPIRED:
            tests.append(
                f"(r.state = '{State.PROCESSING.value}' AND coalesce(r.lease_until, 0) <= {now})"
            )
        elif source is Source.HELD:
            # Stored tokens are never empty, so an empty caller token matches nothing.
            tests.append(f"(r.state = '{State.PROCESSING.value}' AND r.token = {d.p('token')})")
        else:
            tests.append(f"r.state = '{State(source.value).value}'")
    return " OR ".join(tests)


def _sets(d: Dialect, t: Transition, old: Callable[[str], str], token: str = "") -> dict[str, str]:
    """Return column -> new value for a row ``t`` acts on; ``old(col)`` reads its old value.

    ``token``: the new lease's token as SQL; the bound ``new_token`` by default.
    """
    now = d.now
    sets = {"state": f"'{t.target.value}'", "updated_at": now}
    if t.lease:
        sets["attempts"] = f"{old('attempts')} + 1"
        sets["token"] = token or d.p("new_token")
        sets["lease_until"] = f"{now} + {d.p('lease')}"
    elif t.extend:
        sets["lease_until"] = f"{now} + {d.p('lease')}"
    else:
        sets["token"] = sets["lease_until"] = "NULL"  # noqa: S105 - SQL, not a secret
    sets["available_at"] = f"{now} + {d.p('delay')}" if t.delay else "NULL"
    if t.error:
        sets["error"] = d.p("error")
    if t.clear:
        sets["body"] = sets["error"] = "NULL"
    return sets


@dataclass(frozen=True, slots=True)
class Apply:
    """The statements of one transition in one dialect."""

    #: The compare-and-set: a row ``(token, attempts[, record columns])`` when it acted.
    sql: str
    #: Read the state a refused row was found in.
    found: str
    #: The streak reset to run after a success in the same transaction, when the
    #: dialect cannot put it in :attr:`sql`; None otherwise.
    reset: str | None


@functools.cache
def apply_statement(d: Dialect, t: Transition, streak: bool = False) -> Apply:
    """Build (once) the statements applying ``t``; ``streak``: a counter is to be reset."""
    tbl, p = _quote(d.table), d.p
    returning = "token, attempts" + (f", {_COLUMNS}" if t.returns_record else "")
    where = _where(d, t.sources)
    update = ", ".join(f"{col} = {value}" for col, value in _sets(d, t, "r.{}".format).items())
    if t.inserts:
        new = {
            "key": p("key"),
            "state": f"'{State.PENDING.value}'",
            "delivery_id": p("delivery_id"),
            "event": p("event"),
            "generation_id": p("generation_id"),
            "attempts": "0",
            "token": "NULL",
            "lease_until": "NULL",
            "available_at": "NULL",
            "body": p("body"),
            "traceparent": p("traceparent"),
            "error": "NULL",
            "created_at": d.now,
            "updated_at": d.now,
        }
        new.update(_sets(d, t, new.__getitem__))
        conflict = f"DO UPDATE SET {update} WHERE {where}" if where else "DO NOTHING"
        sql = (
            f"INSERT INTO {tbl} AS r ({', '.join(new)}) VALUES ({', '.join(new.values())}) "
            f"ON CONFLICT (key) {conflict} RETURNING {returning}"
        )
    else:
        sql = (
            f"UPDATE {tbl} AS r SET {update} WHERE r.key = {p('key')} AND ({where}) "
            f"RETURNING {returning}"
        )
    reset = None
    if streak and t.ends_streak:
        clear_counter = f"DELETE FROM {_quote(d.counters)} WHERE name = {p('counter')}"
        if d.streak_in_statement:  # one round trip: the reset happens only if the row did
            sql = (
                f"WITH done AS ({sql}), "
                f"streak AS ({clear_counter} AND EXISTS (SELECT 1 FROM done)) "
                "SELECT * FROM done"
            )
        else:
            reset = clear_counter
    return Apply(sql, f"SELECT state FROM {tbl} WHERE key = {p('key')}", reset)


def apply_params(change: Change) -> dict[str, Any]:
    """Return the parameters of :func:`apply_statement` (add ``now`` where bound)."""
    entry = change.entry
    return {
        "key": change.key,
        "delivery_id": entry.delivery_id if entry else None,
        "event": entry.event if entry else None,
        "generation_id": entry.generation_id if entry else None,
        "body": entry.body if entry else None,
        "traceparent": entry.traceparent if entry else None,
        "token": change.token,
        "new_token": new_token() if change.transition.lease else None,
        "lease": float(change.lease),
        "error": change.error,
        "delay": float(change.delay),
        "counter": change.counter,
    }


def applied(t: Transition, row: Sequence[Any] | None, found: Sequence[Any] | None) -> Applied:
    """Read what :func:`apply_statement` answered (``found``: the lookup, when refused)."""
    if row is None:
        return Applied(False, State(found[0]) if found else None)
    token, attempts, *record = row
    return Applied(
        True,
        t.target,
        attempts,
        token or "",
        Record.from_row(record) if t.returns_record else None,
    )


@functools.cache
def lease_many_statement(d: Dialect) -> str:
    """Apply :data:`LEASE` to up to ``limit`` due rows in one statement (PostgreSQL).

    ``FOR UPDATE SKIP LOCKED``: concurrent runners take different rows and never wait.
    Each row gets its own token, made by the server. Rows come back as
    :func:`apply_statement`'s do, for :func:`applied`.
    """
    tbl, where = _quote(d.table), _where(d, LEASE.sources)
    sets = _sets(d, LEASE, "r.{}".format, token=d.row_token)
    update = ", ".join(f"{col} = {value}" for col, value in sets.items())
    columns = ", ".join(f"r.{c}" for c in _COLUMNS.split(", "))
    return (
        f"WITH picked AS (SELECT r.key FROM {tbl} AS r WHERE {where} "
        f"ORDER BY r.updated_at LIMIT {d.p('limit')} FOR UPDATE SKIP LOCKED) "
        f"UPDATE {tbl} AS r SET {update} FROM picked WHERE r.key = picked.key AND ({where}) "
        f"RETURNING r.token, r.attempts, {columns}"
    )


# Queries --------------------------------------------------------------------------


@functools.cache
def due_statement(d: Dialect) -> str:
    """Keys a runner may lease now (:data:`LEASE`'s sources), oldest first.

    One ordered walk of the ``(state, updated_at)`` index per source, each stopping at
    ``limit``: one ``WHERE`` over both states made the database read every pending
    record and sort them (5 ms a poll at 30,000 pending on SQLite, and growing).
    """
    tbl, limit = _quote(d.table), d.p("limit")
    walks = [
        f"SELECT * FROM (SELECT r.key, r.updated_at FROM {tbl} AS r "
        f"WHERE {_where(d, (source,))} ORDER BY r.updated_at LIMIT {limit}) AS s{n}"
        for n, source in enumerate(sorted(LEASE.sources, key=lambda s: s.value))
        if source is not Source.ABSENT
    ]
    return (
        f"SELECT due.key FROM ({' UNION ALL '.join(walks)}) AS due "
        f"ORDER BY due.updated_at LIMIT {limit}"
    )


@functools.cache
def get_statement(d: Dialect) -> str:
    return f"SELECT {_COLUMNS} FROM {_quote(d.table)} WHERE key = {d.p('key')}"


@functools.cache
def records_statement(d: Dialect, by_state: bool) -> str:
    where = f"WHERE state = {d.p('state')} " if by_state else ""
    return (
        f"SELECT {_COLUMNS} FROM {_quote(d.table)} {where}"
        f"ORDER BY updated_at DESC LIMIT {d.p('limit')}"
    )


@functools.cache
def prune_statement(d: Dialect, states: frozenset[State]) -> str:
    """Delete one batch of records in ``states`` older than ``older_than`` seconds."""
    tbl = _quote(d.table)
    wanted = ", ".join(f"'{State(s).value}'" for s in sorted(states, key=lambda s: s.value))
    return (
        f"DELETE FROM {tbl} WHERE key IN (SELECT key FROM {tbl} "
        f"WHERE state IN ({wanted}) AND updated_at < {d.now} - {d.p('older_than')} "
        f"LIMIT {d.prune_batch})"
    )


@functools.cache
def bump_statement(d: Dialect) -> str:
    """Add ``by`` to counter ``counter``, storing 0 instead when it reaches ``limit``."""
    by, limit = d.p("by"), d.p("limit")
    return (
        f"INSERT INTO {_quote(d.counters)} AS n (name, value) "
        f"VALUES ({d.p('counter')}, CASE WHEN {by} >= {limit} THEN 0 ELSE {by} END) "
        "ON CONFLICT (name) DO UPDATE SET "
        f"value = CASE WHEN n.value + {by} >= {limit} THEN 0 ELSE n.value + {by} END "
        "RETURNING value"
    )


def bumped(value: int, by: int, limit: int) -> bool:
    """Tell from the stored value whether :func:`bump_statement` tripped the counter."""
    # 0 is stored only by a trip, unless nothing was added to a counter still at 0.
    return value == 0 and (by > 0 or limit <= 0)
