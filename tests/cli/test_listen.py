from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from gptimg_webhooks.testing import WebhookClient, events
from tests.support.servers import free_port

from .conftest import CLI, SECRET


@pytest.fixture
def listener(tmp_path: Path, flaky_receiver: str) -> Iterator[tuple[str, Path]]:
    """``gptimg-webhooks listen --forward-to`` the flaky receiver; yields (url, log)."""
    with listening(tmp_path, f"{flaky_receiver}/hooks/gptimg") as found:
        yield found


@contextmanager
def listening(tmp_path: Path, forward_to: str) -> Iterator[tuple[str, Path]]:
    """Run ``gptimg-webhooks listen --forward-to URL``; yield (its url, its log)."""
    port = free_port()
    log = tmp_path / "listen.log"
    env = {**os.environ, "GPTIMG_WEBHOOK_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}
    argv = [CLI, "listen", "--port", str(port), "--forward-to", forward_to]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/hooks/gptimg"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        yield url, log
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_listen_verifies_prints_and_relays_unchanged(
    listener: tuple[str, Path], flaky_receiver: str
) -> None:
    url, log = listener
    with WebhookClient(url, SECRET) as client:
        bad = client.deliver(wrong_secret=True)
        assert bad.unauthorized
        first = client.deliver(events.succeeded(generation_id="gen_listen"))
        assert first.failed  # the app answered 503: the listener fails it, the sender retries
        assert client.retry(first).failed
        assert client.retry(first).processed  # the app's third answer is 200
        assert client.retry(first).duplicate  # done: not relayed again
    seen = httpx.get(f"{flaky_receiver}/posts").json()
    assert seen["posts"] == 3  # the bad signature never reached the app
    assert seen["last_body"].encode() == first.delivery.body
    relayed = seen["last_headers"]
    assert relayed["x-gptimg-signature"] == first.delivery.signature
    assert relayed["x-gptimg-delivery"] == first.delivery.delivery_id
    assert relayed["x-gptimg-event"] == "generation.succeeded"
    time.sleep(0.2)
    out = log.read_text()
    assert "401 invalid_signature" in out
    assert "generation.succeeded" in out and "gen_listen" in out
    assert "forwarded to" in out and ": 503" in out and ": 200" in out
    assert "200 duplicate" in out


@pytest.mark.slow
def test_each_failed_relay_and_each_rejection_is_one_line(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hooks/gptimg"
    with listening(tmp_path, closed) as (url, log), WebhookClient(url, SECRET) as client:
        assert client.deliver(wrong_secret=True).unauthorized
        assert client.deliver(events.succeeded(generation_id="gen_nowhere")).failed
        time.sleep(0.3)
        out = log.read_text()
    assert "Traceback" not in out
    rejected = [line for line in out.splitlines() if "invalid_signature" in line]
    assert len(rejected) == 1 and rejected[0].startswith("POST /hooks/gptimg 401")
    failed = [line for line in out.splitlines() if f"{closed} failed" in line]
    assert len(failed) == 1
    assert failed[0].startswith("POST /hooks/gptimg 500 handler_failed")
    assert "ConnectError" in failed[0]
