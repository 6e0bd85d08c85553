from __future__ import annotations

import json
import time

import httpx

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
    assert "attempt 3 at t=150s: 200" in out
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
