from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.servers import free_port, running, uvicorn_argv

#: The installed console script: what users run.
CLI = str(Path(sys.executable).parent / "gptimg-webhooks")
SECRET = "whsec_cli_tests_9f2c4e1ab7d84c0e93a1b5d6"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run ``gptimg-webhooks ARGS`` as a subprocess; the secret is in its environment."""

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, "GPTIMG_WEBHOOK_SECRET": SECRET, "COLUMNS": "200", **(env or {})}
        full.pop("GPTIMG_WEBHOOK_STORE", None)
        done = subprocess.run(
            [CLI, *args],
            input=input,
            capture_output=True,
            env={k: v for k, v in full.items() if v is not None},
            cwd=tmp_path,
            timeout=timeout,
        )
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )

    return run


FLAKY = """
    import json

    state = {"posts": 0}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        status, body = 200, b"[]"
        if scope["method"] == "POST":
            message = await receive()
            while message.get("more_body"):
                message = await receive()
            state["posts"] += 1
            state["last_body"] = message.get("body", b"").decode()
            state["last_headers"] = {k.decode(): v.decode() for k, v in scope["headers"]}
            failing = state["posts"] <= FAILURES
            status = 503 if failing else 200
            body = json.dumps({"ok": not failing, "status": "processed"}).encode()
        elif scope["path"] == "/posts":
            body = json.dumps(state).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
"""


@pytest.fixture
def flaky_receiver(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 whose endpoint fails its first two POSTs."""
    (tmp_path / "flaky_receiver.py").write_text(
        "FAILURES = 2\n" + textwrap.dedent(FLAKY), encoding="utf-8"
    )
    port = free_port()
    argv = uvicorn_argv("flaky_receiver:app", port)
    with running(argv, port=port, cwd=tmp_path, ready_path="/posts") as base:
        yield base
