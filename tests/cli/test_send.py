from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import free_port, running, uvicorn_argv

from .conftest import Run


def test_send_is_delivered_on_the_third_attempt_in_scaled_time(
    cli: Run, flaky_receiver: str
) -> None:
    began = time.monotonic()
    done = cli("send", f"{flaky_receiver}/hooks/gptimg", "--time-scale", "600", "--json")
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (delivery,) = report["deliveries"]
    assert delivery["outcome"] == "delivered"
    assert [a["status"] for a in delivery["attempts"]] == [503, 503, 200]
    # 30 s then 120 s of provider waiting, scaled 600x: 0.25 s of real waiting.
    assert [round(a["at"]) for a in delivery["attempts"]] == [0, 30, 150]
    assert 0.25 <= took < 10
    assert httpx.get(f"{flaky_receiver}/posts").json()["posts"] == 3


def test_send_prints_each_attempt_and_a_summary(cli: Run, flaky_receiver: str) -> None:
    done = cli("send", f"{flaky_receiver}/hooks/gptimg", "--time-scale", "600")
    assert done.returncode == 0
    out = done.stdout
    assert "attempt 1 at t=0s: 503" in out
    assert "next attempt 2 in 30s (real 0.05s)" in out
    # 30 s + 120 s of waits, plus the attempts' real latencies on the provider's timeline.
    assert re.search(r"attempt 3 at t=15[0-3]s: 200", out), out
    assert "delivered" in out and "summary" in out


def test_unreachable_endpoint_exhausts_retries_and_disables(cli: Run) -> None:
    done = cli(
        "send", "http://127.0.0.1:9/hooks", "--count", "2", "--time-scale", "100000", "--json"
    )
    report = json.loads(done.stdout)
    assert done.returncode == 3  # 8 consecutive failures: the endpoint is disabled
    assert report["disabled"] and report["consecutive_failures"] == 8
    errors = {a["error"] for d in report["deliveries"] for a in d["attempts"]}
    assert errors == {"connection refused"}


def test_attempts_one_sends_a_single_attempt(cli: Run, flaky_receiver: str) -> None:
    done = cli("send", f"{flaky_receiver}/hooks/gptimg", "--attempts", "1", "--json")
    assert done.returncode == 1
    (delivery,) = json.loads(done.stdout)["deliveries"]
    assert [a["status"] for a in delivery["attempts"]] == [503]
    assert httpx.get(f"{flaky_receiver}/posts").json()["posts"] == 1


def test_attempts_beyond_the_providers_four_are_a_usage_error(cli: Run) -> None:
    assert cli("send", "--attempts", "5").returncode == 2


@pytest.fixture
def strict_receiver(tmp_path: Path) -> Iterator[str]:
    """The library's own receiver (uvicorn) under another secret than the sender's."""
    (tmp_path / "strict.py").write_text(
        "from gptimg_webhooks import Webhooks\n"
        "from gptimg_webhooks.asgi import WebhookApp\n"
        "app = WebhookApp(Webhooks('whsec_the_receivers_own', store='memory://'))\n"
    )
    port = free_port()
    with running(uvicorn_argv("strict:app", port), port=port, cwd=tmp_path, ready_path="/") as base:
        yield base


def test_a_401_stops_the_retries_and_hints_at_the_secret(cli: Run, strict_receiver: str) -> None:
    began = time.monotonic()
    done = cli("send", f"{strict_receiver}/hooks/gptimg")  # real time scale: 30 s to the next
    assert time.monotonic() - began < 20
    assert done.returncode == 1
    assert "attempt 1 at t=0s: 401 invalid_signature" in done.stdout
    assert "next attempt" not in done.stdout
    hint = " ".join(done.stderr.split())
    assert "hint: 401 invalid_signature" in hint and "GPTIMG_WEBHOOK_SECRET" in hint
    assert "gptimg-webhooks verify" in hint and "--retry-401" in hint


def test_retry_401_retries_like_the_provider(cli: Run, strict_receiver: str) -> None:
    done = cli(
        "send",
        f"{strict_receiver}/hooks/gptimg",
        "--retry-401",
        "--time-scale",
        "100000",
        "--json",
    )
    report = json.loads(done.stdout)
    assert [a["status"] for a in report["deliveries"][0]["attempts"]] == [401] * 4
    assert "GPTIMG_WEBHOOK_SECRET" in report["hint"]
