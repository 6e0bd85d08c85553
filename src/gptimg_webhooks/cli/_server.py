"""Run an ASGI app under uvicorn, in this process, on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import click

from gptimg_webhooks.cli._common import EXIT_UNAVAILABLE, Unavailable

__all__ = ["BackgroundServer", "pick_port", "serve"]


def _free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, port: int, fallback: bool) -> int:
    """Return ``port`` if free, else (with ``fallback``) any free port; 0 means any."""
    if port and _free(host, port):
        return port
    if port and not fallback:
        raise Unavailable(f"port {port} on {host} is in use")
    with socket.socket() as s:
        s.bind((host, 0))
        found: int = s.getsockname()[1]
        return found


def _config(app: Any, host: str, port: int) -> Any:
    try:
        import uvicorn
    except ImportError as exc:  # pragma: no cover - uvicorn is in the cli extra
        raise Unavailable("this command needs uvicorn: pip install 'gptimg-webhooks[cli]'") from exc
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")


def serve(app: Any, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    server = uvicorn.Server(_config(app, host, port))
    server.run()
    if not server.started:
        raise click.exceptions.Exit(EXIT_UNAVAILABLE)


class BackgroundServer:
    """uvicorn in a daemon thread, for commands that talk to their own server."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        import uvicorn

        self.server = uvicorn.Server(_config(app, host, port))
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise Unavailable(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        """Block until Ctrl-C."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
