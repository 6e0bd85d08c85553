"""An append-only log of handler invocations, shared by processes, with an HTML view.

The examples and the ``demo`` command record every handler run here, one row per run
(never an upsert), so a delivery run twice shows twice: tests assert on it, people look
at it in a browser.
"""

from __future__ import annotations

import html
import json
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gptimg_webhooks._core.errors import ConfigurationError
from gptimg_webhooks._core.events import Event
from gptimg_webhooks.stores.sqlite import enable_wal

__all__ = [
    "DATA_DIR_ENV",
    "OPTIONS_ENV",
    "Gallery",
    "demo_plan",
    "example_options",
    "example_prune_interval",
    "render_gallery",
]

DATA_DIR_ENV = "GPTIMG_EXAMPLE_DATA_DIR"
#: JSON object of extra ``Webhooks(...)`` arguments for the examples, e.g.
#: ``{"max_event_age": 3600, "retention": 60}``: how tests and ``scripts/soak`` tune them.
OPTIONS_ENV = "GPTIMG_WEBHOOK_OPTIONS"


def example_options(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Return the ``Webhooks(...)`` arguments in ``$GPTIMG_WEBHOOK_OPTIONS`` (JSON), or ``{}``."""
    raw = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        raise ConfigurationError(f"{OPTIONS_ENV} is not JSON") from None
    if not isinstance(found, dict):
        raise ConfigurationError(f"{OPTIONS_ENV} must be a JSON object")
    found.pop("prune_interval", None)  # not an argument: see example_prune_interval()
    return found


def example_prune_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Return ``prune_interval`` from ``$GPTIMG_WEBHOOK_OPTIONS``: how often the keeper prunes.

    Not a ``Webhooks`` argument (hourly suits every deployment); the soak sets it short so
    pruning happens while it runs.
    """
    raw = (os.environ if environ is None else environ).get(OPTIONS_ENV, "").strip()
    try:
        value = json.loads(raw).get("prune_interval") if raw else None
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


#: Generation id prefix -> (seconds the handler takes, attempts that fail first).
DEMO_BEHAVIOURS: dict[str, tuple[float, int]] = {
    "gen_slow_": (1.5, 0),  # a copy arriving meanwhile is in progress
    "gen_flaky_": (0.0, 1),  # fails on attempt 1, succeeds on the retry
    "gen_stall_": (6.0, 0),  # outlives the reply deadline and the provider's 5 s
    "gen_stallfail_": (4.5, 2),  # past the reply deadline, then fails (attempts 1 and 2)
}


def demo_plan(event: Event, attempt: int) -> tuple[float, str | None]:
    """Say how long the examples' handler takes for ``event`` and what it raises after.

    The examples and the demo share these behaviours so tests can exercise retries,
    in-progress duplicates and the reply deadline through every adapter.
    """
    generation_id = str(getattr(getattr(event, "data", None), "generation_id", ""))
    for prefix, (seconds, failures) in DEMO_BEHAVIOURS.items():
        if generation_id.startswith(prefix):
            error = f"demo handler ({prefix}*): fails on attempt {attempt}"
            return seconds, error if attempt <= failures else None
    return 0.0, None


class Gallery:
    """Rows of ``{"generationId", "event", "status", "outputs", "error"}`` in a SQLite file."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / "gallery.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS invocations (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "generation_id TEXT, event TEXT, status TEXT, outputs TEXT, error TEXT)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=10)
            enable_wal(conn, 10)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def add(self, event: Event) -> None:
        """Append one row for one handler invocation."""
        data = getattr(event, "data", None)
        outputs = [o.model_dump() for o in getattr(data, "outputs", [])]
        with self._conn() as conn:
            conn.execute(
                "INSERT INTO invocations (generation_id, event, status, outputs, error) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    getattr(data, "generation_id", None),
                    event.event,
                    getattr(data, "status", None),
                    json.dumps(outputs),
                    getattr(data, "error", None),
                ),
            )

    def rows(self) -> list[dict[str, Any]]:
        """Return every invocation, in order."""
        with self._conn() as conn:
            found = conn.execute(
                "SELECT generation_id, event, status, outputs, error FROM invocations ORDER BY id"
            ).fetchall()
        return [
            {"generationId": g, "event": e, "status": s, "outputs": json.loads(o), "error": err}
            for g, e, s, o, err in found
        ]


def render_gallery(rows: list[dict[str, Any]], title: str = "gptimg_webhooks gallery") -> str:
    """Render rows as a small HTML page: images of successes, errors of failures."""
    cards = []
    for row in reversed(rows):
        gid = html.escape(str(row["generationId"]))
        if row["event"] == "generation.succeeded":
            images = "".join(
                f'<img src="{html.escape(str(o.get("webp") or o.get("png")), quote=True)}" '
                f'alt="{gid}" width="{int(o.get("width") or 256) // 4}">'
                for o in row["outputs"]
            )
            cards.append(
                f'<figure class="ok" data-generation="{gid}">{images}'
                f"<figcaption>{gid}</figcaption></figure>"
            )
        else:
            error = html.escape(str(row.get("error") or row["event"]))
            cards.append(
                f'<figure class="failed" data-generation="{gid}">'
                f'<p class="error">{error}</p><figcaption>{gid}</figcaption></figure>'
            )
    body = "\n".join(cards) or "<p>No deliveries yet.</p>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2rem}figure{display:inline-block;"
        "margin:.5rem;padding:.5rem;border:1px solid #ccc}.failed{border-color:#c33}"
        ".error{color:#c33}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{len(rows)} handler invocations</p>"
        f"{body}</body></html>"
    )
