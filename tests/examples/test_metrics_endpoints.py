"""Each example serves GET /metrics under its real server; known traffic, exact counts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gptimg_webhooks.testing import events, signed
from tests.support.servers import ROOT, free_port, gunicorn_argv, running, uvicorn_argv

pytestmark = pytest.mark.slow

SECRET = "whsec_metrics_example_tests"
EXAMPLES = ["starlette", "flask", "django"]


@pytest.fixture(params=EXAMPLES)
def example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    # One process: Prometheus counters are per process (the ledger's gauges are not).
    env = {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        "GPTIMG_WEBHOOK_STORE": "memory://",
        "GPTIMG_EXAMPLE_DATA_DIR": str(tmp_path),
        "GPTIMG_EXAMPLE_ENGINE": "",
    }
    if request.param == "starlette":
        argv = uvicorn_argv("examples.starlette_app.app:app", port)
    elif request.param == "flask":
        argv = gunicorn_argv("examples.flask_app.app:app", port, workers=1)
    else:
        env["DJANGO_SETTINGS_MODULE"] = "config.settings"
        example = ROOT / "examples" / "django_app"
        done = subprocess.run(
            [sys.executable, str(example / "manage.py"), "migrate", "-v", "0"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        argv = [*gunicorn_argv("config.wsgi:application", port, workers=1), "--chdir", str(example)]
    with running(argv, port=port, env=env) as base:
        yield base


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(base + "/metrics", timeout=10)
    assert answer.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_metrics_count_exactly_the_traffic_sent(example: str) -> None:
    originals = [signed(events.succeeded(), SECRET) for _ in range(4)]
    sent = [
        *originals,
        originals[0],  # the provider's retry
        originals[1].forged(),  # a replay under a fresh id
        originals[2].forged(),
        signed(events.succeeded(), SECRET, wrong_secret=True),
        signed(events.succeeded(), SECRET, wrong_secret=True),
        signed(events.succeeded(), SECRET, omit=["signature"]),
    ]
    with httpx.Client(base_url=example, timeout=10) as client:
        statuses = [
            client.post("/hooks/gptimg", content=d.body, headers=d.headers).status_code
            for d in sent
        ]
    assert statuses == [200] * 7 + [401] * 3
    found = scrape(example)
    succeeded = "generation.succeeded"

    def delivered(event: str, outcome: str) -> float | None:
        labels = (("event", event), ("outcome", outcome))
        return found.get(("gptimg_webhooks_deliveries_total", labels))

    assert delivered(succeeded, "processed") == 4
    assert delivered(succeeded, "duplicate") == 3
    assert delivered("", "invalid_signature") == 3
    failures = "gptimg_webhooks_signature_failures_total"
    assert found[(failures, (("cause", "mismatch"),))] == 2
    assert found[(failures, (("cause", "missing"),))] == 1
    assert found[("gptimg_webhooks_answer_latency_seconds_count", ())] == 10
    assert found[("gptimg_webhooks_pending_records", ())] == 0
    assert found[("gptimg_webhooks_failure_streak", (("endpoint", "/hooks/gptimg"),))] == 0
    health = httpx.get(example + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["ok"] is True
