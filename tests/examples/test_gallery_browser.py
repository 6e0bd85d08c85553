"""End to end: deliveries into the Flask example under gunicorn, its gallery in Chromium."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.examples.conftest import ImageServer
from tests.support.contract import headers, payload
from tests.support.servers import free_port, gunicorn_argv, running

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SECRET = "whsec_browser_e2e_0123456789"
ERRORS = {
    "gen_fail_policy": "content policy: prompt refused",
    # Markup in an error must show as text, never become an element.
    "gen_fail_markup": 'upstream said <img src=x onerror="alert(1)"> & gave up',
}


class Gallery(HTMLParser):
    """Collect the image sources and the error texts of a rendered gallery DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.errors: list[str] = []
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.images.append(found.get("src") or "")
        self._in_error = tag == "p" and found.get("class") == "error"
        if self._in_error:
            self.errors.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error:
            self.errors[-1] += data


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    """Load ``url`` in headless Chromium and return the DOM it rendered."""
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(argv, capture_output=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


def test_gallery_shows_images_and_errors_in_chromium(
    chromium: str, image_server: ImageServer, tmp_path: Path
) -> None:
    succeeded = ["gen_ok_cat", "gen_ok_dog", "gen_ok_owl"]
    images = {g: f"{image_server.base}/o/{g}/0.webp" for g in succeeded}
    port = free_port()
    env = {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        "GPTIMG_WEBHOOK_STORE": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path / "data"),
    }
    argv = gunicorn_argv("examples.flask_app.app:app", port, workers=2)
    with running(argv, port=port, env=env, cwd=tmp_path) as base:
        with httpx.Client(timeout=10) as client:
            for gid in succeeded:
                output = {"png": images[gid][:-4] + "png", "webp": images[gid]}
                body = payload(gid, outputs=[{**output, "width": 1024, "height": 1024}])
                sent = client.post(
                    base + "/hooks/gptimg", content=body, headers=headers(body, SECRET)
                )
                assert sent.status_code == 200, sent.text
            for gid, error in ERRORS.items():
                body = payload(gid, event="generation.failed", error=error)
                h = headers(body, SECRET, event="generation.failed")
                sent = client.post(base + "/hooks/gptimg", content=body, headers=h)
                assert sent.status_code == 200, sent.text
        dom = dump_dom(chromium, base + "/", tmp_path / "profile")

    page = Gallery()
    page.feed(dom)
    assert sorted(page.images) == sorted(images.values()), dom
    assert sorted(page.errors) == sorted(ERRORS.values()), dom
    assert "5 handler invocations" in dom
    # The browser really loaded each image from the page, not just held its URL.
    assert sorted(image_server.fetched) == sorted(f"/o/{g}/0.webp" for g in succeeded)
