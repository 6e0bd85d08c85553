from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gptimg_webhooks.client import Client
from tests.support.servers import free_port

from .conftest import CLI, Run

KEY = "gimg_cli_provider_tests_5c1e"


def start(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPTIMG_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    argv = [CLI, "provider", "--port", str(port), "--time-scale", "600"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/v1/generations/x", timeout=1)
            return proc
        except httpx.TransportError:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_provider_serves_the_api_and_stops_cleanly_on_a_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    log = tmp_path / "provider.log"
    proc = start(port, log)
    try:
        base = f"http://127.0.0.1:{port}"
        with Client(KEY, base_url=f"{base}/api/v1") as api:
            submitted = api.generate("a lighthouse")
            deadline = time.monotonic() + 20
            while api.get_generation(submitted.generation_id).status != "succeeded":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        unauthorized = httpx.post(f"{base}/api/v1/generate", json={"prompt": "x"})
        assert unauthorized.status_code == 401
    finally:
        code = stop(proc, sig)
    out = log.read_text()
    assert code == 0, out
    assert f"local provider running on http://127.0.0.1:{port}" in out
    assert f"API base URL: http://127.0.0.1:{port}/api/v1" in out
    assert f"API key: {KEY}" in out
    assert "stopped" in out and "Traceback" not in out


def test_provider_refuses_a_port_in_use_with_exit_4(cli: Run) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        done = cli("provider", "--port", str(s.getsockname()[1]), timeout=30)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "in use" in done.stderr and "Traceback" not in done.stderr


def test_provider_refuses_a_malformed_api_key_with_exit_2(cli: Run) -> None:
    done = cli("provider", "--port", "0", env={"GPTIMG_API_KEY": "sk_live_wrong"}, timeout=30)
    assert done.returncode == 2
    assert "GPTIMG_API_KEY" in done.stderr and "Traceback" not in done.stderr
