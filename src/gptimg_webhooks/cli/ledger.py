"""``ledger``: list, show, replay and prune delivery records in any store."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click
from rich.table import Table

from gptimg_webhooks._core.durations import DURATION_HELP, parse_duration
from gptimg_webhooks._core.errors import ConfigurationError
from gptimg_webhooks._core.ledger import Record, State, Store
from gptimg_webhooks._core.receiver import DEFAULT_RETENTION, DEFAULT_STORE, STORE_ENV
from gptimg_webhooks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    ConfigProblem,
    console,
    err_console,
    json_option,
    load_receiver,
    one_line_logs,
    open_readonly,
    open_writable,
    print_json,
)

__all__ = ["ledger"]

_STATES = [s.value for s in State]
#: How many records a prefix search or a dry run scans at most.
_SCAN = 100_000
_MIN_PREFIX = 8


def _store_option(func: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help=f"Store URL (default: ${STORE_ENV}, else {DEFAULT_STORE}).",
    )(func)


def _url(url: str | None) -> str:
    return url or os.environ.get(STORE_ENV) or DEFAULT_STORE


@contextmanager
def _closing(store: Store) -> Iterator[Store]:
    try:
        yield store
    finally:
        store.close()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _as_json(rec: Record, body: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": rec.key,
        "state": rec.state.value,
        "delivery_id": rec.delivery_id,
        "event": rec.event,
        "generation_id": rec.generation_id,
        "attempts": rec.attempts,
        "error": rec.error,
        "created_at": rec.created_at,
        "updated_at": rec.updated_at,
        "body_size": len(rec.body) if rec.body is not None else None,
    }
    if body:
        out["body"] = rec.body.decode("utf-8", "replace") if rec.body is not None else None
    return out


def _find(store: Store, ref: str) -> Record:
    """Return the record ``ref`` names: its key, delivery id, or an 8+ character prefix of either.

    ``send`` prints the first 8 characters of the delivery id; that is enough.
    """
    ref = ref.strip()
    found = store.get(ref) if ref else None
    if found is not None:
        return found
    needle = ref.lower()
    if len(needle) < _MIN_PREFIX:
        raise ConfigProblem(
            f"{ref!r} is too short: give a full key or delivery id, or at least "
            f"{_MIN_PREFIX} characters of one"
        )
    matches = [
        r
        for r in store.records(None, limit=_SCAN)
        if r.key.startswith(needle) or (r.delivery_id or "").lower().startswith(needle)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigProblem(f"no record with key or delivery id {ref!r}")
    shown = "; ".join(f"key {r.key[:16]} delivery {r.delivery_id}" for r in matches[:10])
    more = f" (and {len(matches) - 10} more)" if len(matches) > 10 else ""
    raise ConfigProblem(
        f"{ref!r} matches {len(matches)} records: {shown}{more}; give more characters"
    )


@click.group()
def ledger() -> None:
    """Inspect and repair the delivery ledger of any store (--store URL)."""


@ledger.command("list")
@_store_option
@click.option("--state", type=click.Choice(_STATES), help="Only records in this state.")
@click.option("--limit", default=50, show_default=True)
@json_option
def list_records(store_url: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List records, newest first."""
    with _closing(open_readonly(_url(store_url))) as store:
        found = store.records(State(state) if state else None, limit=limit)
    if as_json:
        print_json([_as_json(r) for r in found])
        return
    table = Table()
    for name in ("key", "state", "event", "generation", "attempts", "updated (UTC)", "error"):
        table.add_column(name)
    for r in found:
        table.add_row(
            r.key[:12],
            r.state.value,
            r.event or "-",
            r.generation_id or "-",
            str(r.attempts),
            _when(r.updated_at),
            (r.error or "")[:60],
        )
    console.print(table)
    console.print(f"{len(found)} record(s)")


@ledger.command()
@click.argument("key")
@_store_option
@json_option
def show(key: str, store_url: str | None, as_json: bool) -> None:
    """Show one record with its body.

    KEY: the record's key or delivery id, or at least 8 characters of either (the short
    delivery id ``send`` prints). A prefix that matches several records exits 2 and
    lists them.
    """
    with _closing(open_readonly(_url(store_url))) as store:
        rec = _find(store, key)
    if as_json:
        print_json(_as_json(rec, body=True))
        return
    for name, value in _as_json(rec).items():
        shown = _when(value) if name in ("created_at", "updated_at") else value
        console.print(f"[bold]{name:>13}[/bold] {shown}")
    if rec.body is not None:
        try:
            text = json.dumps(json.loads(rec.body), indent=2, ensure_ascii=False)
        except ValueError:
            text = rec.body.decode("utf-8", "replace")
        console.print(text, markup=False)


@ledger.command()
@click.argument("keys", nargs=-1)
@_store_option
@click.option(
    "--state",
    type=click.Choice(["failed", "dead", "both"]),
    default=None,
    help="Replay every record in this state (instead of KEYS).",
)
@click.option(
    "--app",
    "app_ref",
    metavar="MODULE:ATTR",
    help="Run the handlers now, with this receiver (a Webhooks object).",
)
@json_option
def replay(
    keys: tuple[str, ...],
    store_url: str | None,
    state: str | None,
    app_ref: str | None,
    as_json: bool,
) -> None:
    """Replay failed or dead records from their kept bodies.

    KEYS: keys or delivery ids, or 8+ character prefixes of either. Only the records
    named (or, with --state, in that state) are touched.

    Without --app, records go back to pending, for ``gptimg-webhooks worker`` to run.
    With --app MODULE:ATTR, that receiver's handlers run here and now, record by record;
    one that fails again is kept as dead with its new error, and the others are still
    tried. The store defaults to the receiver's.

    Exit status: 0 every record replayed (with --app: processed), 1 any was not.
    """
    if not keys and state is None:
        raise click.UsageError("give record KEYS or --state failed|dead|both")
    if keys and state is not None:
        raise click.UsageError("give record KEYS or --state, not both")
    hooks = load_receiver(app_ref) if app_ref else None
    if hooks is not None:
        one_line_logs()  # a handler that fails again is one outcome line, not a traceback
        if store_url:
            hooks.store = open_writable(store_url)
        store = hooks.store
    else:
        store = open_writable(_url(store_url))
    try:
        if keys:
            chosen = [_find(store, k).key for k in keys]
        else:
            wanted = [State.FAILED, State.DEAD] if state == "both" else [State(str(state))]
            chosen = [r.key for s in wanted for r in store.records(s, limit=_SCAN)]
        if hooks is not None:
            from gptimg_webhooks.replay import replay_now

            results = [o.as_json() for o in replay_now(hooks, chosen)]
        else:
            results = [_requeue(store, key) for key in chosen]
    finally:
        if hooks is not None:
            hooks.close()
        else:
            store.close()
    if as_json:
        print_json(results)
    else:
        for r in results:
            colour = "green" if r["ok"] else "red"
            error = f"  {r['error']}" if r.get("error") and not r["ok"] else ""
            console.print(f"{r['key'][:12]} [{colour}]{r['status']}[/{colour}]{error}")
        if results:
            console.print(f"{sum(r['ok'] for r in results)}/{len(results)} replayed")
        else:
            console.print("nothing to replay")
    sys.exit(EXIT_OK if all(r["ok"] for r in results) else EXIT_FAILED)


def _requeue(store: Store, key: str) -> dict[str, Any]:
    """Put one failed or dead record back to pending, for a worker."""
    if store.replay(key):
        return {"key": key, "status": "queued", "ok": True, "state": "pending"}
    rec = store.get(key)
    state = rec.state.value if rec is not None else None
    return {"key": key, "status": "not_replayable", "ok": False, "state": state}


def _prune(store: Store, age: float, *, include_failed: bool) -> int:
    """Delete done records untouched for ``age`` seconds, and failed/dead ones if asked."""
    removed = store.prune(age, (State.DONE,))
    if include_failed:
        removed += store.prune(age, (State.FAILED, State.DEAD))
    return removed


def _older(store: Store, states: list[State], before: float) -> list[Record]:
    return [r for s in states for r in store.records(s, limit=_SCAN) if r.updated_at < before]


@ledger.command()
@_store_option
@click.option(
    "--older-than",
    default=f"{int(DEFAULT_RETENTION // 86400)}d",
    show_default=True,
    help=f"Delete records untouched for this long ({DURATION_HELP}).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--include-failed",
    is_flag=True,
    help="Also delete failed and dead records (kept for replay); asks first unless --yes.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask before deleting failed records.")
@json_option
def prune(
    store_url: str | None,
    older_than: str,
    dry_run: bool,
    include_failed: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete done records untouched for longer than --older-than.

    Failed and dead records keep their bodies for replay: they go only with
    --include-failed, after a confirmation (or --yes), and each one deleted is listed.
    Pending and in-progress records are never pruned. The default age is the
    receiver's retention: replays of captured bodies stay recognised that long.
    """
    try:
        age = parse_duration(older_than)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    before = time.time() - age
    with _closing(open_writable(_url(store_url))) as store:
        done = _older(store, [State.DONE], before)
        failed = _older(store, [State.FAILED, State.DEAD], before)
        if dry_run:
            would = {"done": len(done), "failed": len(failed) if include_failed else 0}
            kept = 0 if include_failed else len(failed)
            if as_json:
                print_json({"dry_run": True, "would_remove": would, "failed_kept": kept})
            else:
                console.print(
                    f"dry run: would remove {would['done']} done and {would['failed']} "
                    f"failed/dead record(s) older than {older_than}"
                    + (f"; {kept} failed/dead record(s) kept for replay" if kept else "")
                )
            return
        if include_failed and failed:
            for rec in failed:
                err_console.print(
                    f"will delete {rec.state.value} {rec.key[:12]} ({rec.event or '-'} "
                    f"{rec.generation_id or '-'}): {rec.error or ''}",
                    markup=False,
                )
            if not yes:
                if not sys.stdin.isatty():
                    raise ConfigProblem(
                        f"deleting {len(failed)} failed/dead record(s) needs a confirmation: "
                        "pass --yes"
                    )
                click.confirm(
                    f"Delete {len(failed)} failed/dead record(s) kept for replay?", abort=True
                )
        removed = _prune(store, age, include_failed=include_failed)
    if as_json:
        print_json({"removed": removed, "failed_removed": len(failed) if include_failed else 0})
    else:
        console.print(f"removed {removed} record(s) older than {older_than}")
