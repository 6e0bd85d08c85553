from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gptimg_webhooks import Delivery, Event
from gptimg_webhooks.flask import GptimgWebhooks
from tests.support.contract import headers, payload
from tests.support.servers import free_port, gunicorn_argv, running

SECRET = "whsec_flask_tests_0123456789abcdef"


def signed(
    body: bytes, *, secret: str = SECRET, event: str = "generation.succeeded"
) -> dict[str, str]:
    """Return the headers the provider would send for ``body``."""
    return headers(body, secret, event)


def delivery(generation_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """Return a fresh signed ``generation.succeeded`` body and its headers."""
    body = payload(generation_id or f"gen_{uuid.uuid4().hex[:12]}")
    return body, signed(body)


class Calls(list[tuple[Event, Delivery]]):
    """What the handlers saw, in order."""

    def ids(self) -> list[str]:
        return [getattr(event.data, "generation_id", "") for event, _ in self]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def make_app(calls: Calls) -> Callable[..., tuple[Flask, GptimgWebhooks]]:
    """Build an app with the extension from config; handlers record into ``calls``."""

    def build(**config: Any) -> tuple[Flask, GptimgWebhooks]:
        app = Flask(__name__)
        # TESTING propagates any exception to the test client instead of a Flask 500 page.
        app.config.update(
            {
                "TESTING": True,
                "GPTIMG_WEBHOOK_SECRET": SECRET,
                "GPTIMG_WEBHOOK_STORE": "memory://",
                **config,
            }
        )
        ext = GptimgWebhooks()

        @ext.on("generation.succeeded", "generation.failed")
        def record(event: Event, delivery: Delivery) -> None:
            if getattr(event.data, "generation_id", "").startswith("gen_boom_"):
                raise RuntimeError("handler exploded")
            calls.append((event, delivery))

        ext.init_app(app)
        return app, ext

    return build


@pytest.fixture(scope="module")
def flask_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Serve examples.flask_app under ``gunicorn -w 4``; yield its URL and working dir.

    The server's log is ``server.log`` in the working dir.
    """
    work = tmp_path_factory.mktemp("flask_gunicorn")
    port = free_port()
    env = {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        # Unset: the default ledger, a SQLite file in the working directory (``work``).
        "GPTIMG_WEBHOOK_STORE": "",
        "GPTIMG_EXAMPLE_DATA_DIR": str(work / "data"),
    }
    argv = gunicorn_argv("examples.flask_app.app:app", port, workers=4)
    log = Path(work) / "server.log"
    with running(argv, port=port, env=env, cwd=Path(work), log_path=log) as base:
        yield base, work
