"""``ledger``: list, show, replay and prune delivery records in any store."""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import click
from rich.table import Table

from gptimg_webhooks._core.errors import StoreUnavailable, WebhookError
from gptimg_webhooks._core.ledger import Record, State, Store
from gptimg_webhooks._core.receiver import DEFAULT_RETENTION, DEFAULT_STORE, STORE_ENV, Webhooks
from gptimg_webhooks.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    Unavailable,
    console,
    json_option,
    print_json,
)

__all__ = ["ledger"]

_STATES = [s.value for s in State]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _store_option(func: Any) -> Any:
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help=f"Store URL (default: ${STORE_ENV}, else {DEFAULT_STORE}).",
    )(func)


@contextmanager
def _open(url: str | None) -> Iterator[Store]:
    from gptimg_webhooks.stores import open_store

    url = url or os.environ.get(STORE_ENV) or DEFAULT_STORE
    try:
        store = open_store(url)
    except WebhookError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        yield store
    except StoreUnavailable as exc:
        raise Unavailable(f"store {url}: {exc}") from exc
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


def _find(store: Store, key: str) -> Record:
    """Return a record by full key, key prefix (8+ hex) or delivery id."""
    found = store.get(key)
    if found is not None:
        return found
    matches = [
        r
        for r in store.records(None, limit=100_000)
        if (len(key) >= 8 and r.key.startswith(key)) or r.delivery_id == key
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise click.BadParameter(f"no record with key or delivery id {key!r}", param_hint="KEY")
    raise click.BadParameter(f"{key!r} matches {len(matches)} records; give more of the key")


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
    with _open(store_url) as store:
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
    """Show one record (KEY: full key, 8+ character prefix, or delivery id) with its body."""
    with _open(store_url) as store:
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


def _load_receiver(ref: str) -> Webhooks:
    module_name, _, attr = ref.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        receiver = getattr(module, attr or "hooks")
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"cannot load {ref!r}: {exc}") from exc
    found = getattr(receiver, "receiver", receiver)  # an adapter wrapping a receiver
    if not isinstance(found, Webhooks):
        raise click.BadParameter(f"{ref!r} is not a Webhooks receiver", param_hint="--app")
    return found


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

    Without --app, records go back to pending, for ``gptimg-webhooks worker`` to run.
    With --app MODULE:ATTR, the handlers of that receiver run here and now: failed
    records are claimed and run directly; dead ones are put back to pending and leased
    with anything else due, like one worker pass. The store defaults to the
    receiver's.

    Exit status: 0 all replayed (and, with --app, processed), 1 otherwise.
    """
    if not keys and state is None:
        raise click.UsageError("give record KEYS or --state failed|dead|both")
    hooks = _load_receiver(app_ref) if app_ref else None
    url = store_url if store_url or hooks is None else None
    results: list[dict[str, Any]] = []
    with _open(url) if hooks is None or url else _borrow(hooks.store) as store:
        if keys:
            chosen = [_find(store, k) for k in keys]
        else:
            wanted = ["failed", "dead"] if state == "both" else [str(state)]
            chosen = [r for s in wanted for r in store.records(State(s), limit=100_000)]
        for rec in chosen:
            if rec.state not in (State.FAILED, State.DEAD):
                results.append({"key": rec.key, "ok": False, "result": f"is {rec.state.value}"})
            elif hooks is not None:
                word = hooks.rerun(rec.key)  # the one replay path; failing again: dead
                results.append({"key": rec.key, "ok": word == "processed", "result": word})
            else:
                done = store.replay(rec.key)
                word = "pending" if done else "not replayable"
                results.append({"key": rec.key, "ok": done, "result": word})
    if as_json:
        print_json(results)
    else:
        for r in results:
            colour = "green" if r["ok"] else "red"
            console.print(f"{r['key'][:12]} [{colour}]{r['result']}[/{colour}]")
        console.print(f"{sum(r['ok'] for r in results)}/{len(results)} replayed")
    sys.exit(EXIT_OK if results and all(r["ok"] for r in results) else EXIT_FAILED)


@contextmanager
def _borrow(store: Store) -> Iterator[Store]:
    try:
        yield store
    except StoreUnavailable as exc:
        raise Unavailable(f"store: {exc}") from exc


def _seconds(text: str) -> float:
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise click.BadParameter(f"not a duration: {text!r} (try 30d, 12h, 90m, 3600)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@ledger.command()
@_store_option
@click.option(
    "--older-than",
    default=f"{int(DEFAULT_RETENTION // 86400)}d",
    show_default=True,
    help="Delete settled records untouched for this long (s, m, h, d, w).",
)
@json_option
def prune(store_url: str | None, older_than: str, as_json: bool) -> None:
    """Delete settled records (done, failed, dead) untouched for longer than --older-than.

    Pending and in-progress records are never pruned. The default is the receiver's
    retention: replays of captured bodies stay recognised that long.
    """
    age = _seconds(older_than)
    with _open(store_url) as store:
        removed = store.prune(age)
    if as_json:
        print_json({"removed": removed})
    else:
        console.print(f"removed {removed} record(s) older than {older_than}")
