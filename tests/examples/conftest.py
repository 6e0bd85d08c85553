from __future__ import annotations

import base64
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.services import unavailable

# A 1x1 PNG: what the image server answers for every path.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Return Debian's chromium binary, or skip (fail under CI) when it is missing."""
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if found is None:
        unavailable("chromium not installed: apt-get install -y chromium")
    return found


class ImageServer:
    """Serve a pixel at every path on 127.0.0.1 and remember which paths were fetched."""

    def __init__(self) -> None:
        self.fetched: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetched.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PIXEL)))
                self.end_headers()
                self.wfile.write(PIXEL)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    images = ImageServer()
    thread = threading.Thread(target=images.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield images
    finally:
        images.httpd.shutdown()
        images.httpd.server_close()
