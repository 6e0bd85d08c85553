from __future__ import annotations

import asyncio
import time
from typing import Any

from gptimg_webhooks.testing import (
    Clock,
    FakeClock,
    Gallery,
    Policy,
    SimEvent,
    Simulator,
    events,
)


def failing_app(failures: int, delay: float = 0.0) -> Any:
    """An ASGI endpoint that answers 503 to the first ``failures`` POSTs, then 200."""
    seen = {"posts": 0}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        seen["posts"] += 1
        await asyncio.sleep(delay)
        status = 503 if seen["posts"] <= failures else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def test_retries_follow_the_schedule_and_deliver_on_the_third_attempt(secret: str) -> None:
    seen: list[str] = []
    with Simulator(
        failing_app(2), secret, clock=FakeClock(), observer=lambda e: seen.append(e.kind)
    ) as sim:
        report = sim.deliver(events.succeeded())
    assert report.delivered
    assert [a.status for a in report.attempts] == [503, 503, 200]
    assert [round(a.at) for a in report.attempts] == [0, 30, 150]
    assert {a.delivery_id for a in report.attempts} == {report.delivery.delivery_id}
    assert seen.count("waiting") == 2 and seen[-1] == "done"


def test_out_of_retries_after_four_attempts(secret: str) -> None:
    with Simulator(failing_app(99), secret, clock=FakeClock()) as sim:
        report = sim.deliver(events.succeeded())
    assert report.outcome == "failed"
    assert [round(a.at) for a in report.attempts] == [0, 30, 150, 750]


def test_endpoint_is_disabled_after_eight_consecutive_failures(secret: str) -> None:
    with Simulator(failing_app(99), secret, clock=FakeClock()) as sim:
        first, second, third = (sim.deliver(events.succeeded()) for _ in range(3))
        assert first.outcome == "failed" and len(first.attempts) == 4
        assert second.outcome == "disabled" and len(second.attempts) == 4
        assert third.outcome == "disabled" and third.attempts == []
        assert sim.disabled and sim.consecutive_failures == 8
        sim.enable()
        assert not sim.disabled


def test_success_resets_the_consecutive_failure_count(secret: str) -> None:
    with Simulator(failing_app(3), secret, clock=FakeClock()) as sim:
        assert sim.deliver(events.succeeded()).delivered
        assert sim.consecutive_failures == 0


def test_slow_answer_is_a_timeout_and_is_retried(secret: str) -> None:
    policy = Policy(timeout=0.2)
    with Simulator(failing_app(0, delay=0.5), secret, policy=policy, clock=FakeClock()) as sim:
        report = sim.deliver(events.succeeded())
    first = report.attempts[0]
    assert first.status is None and first.error == "timeout after 0.2s"
    assert 0.15 < first.latency < 0.45
    assert report.outcome == "failed"


def test_scaled_time_runs_the_schedule_in_a_fraction_of_real_time(secret: str) -> None:
    began = time.monotonic()
    with Simulator(failing_app(2), secret, clock=Clock(600)) as sim:
        report = sim.deliver(events.succeeded())
    took = time.monotonic() - began
    assert report.delivered
    assert 0.25 <= took < 3.0  # (30 s + 120 s) / 600 = 0.25 s of waiting


def test_concurrent_duplicates_run_the_handler_once(
    gallery_app: Any, secret: str, gallery: Gallery
) -> None:
    states: list[SimEvent] = []
    with Simulator(gallery_app, secret, clock=Clock(60), observer=states.append) as sim:
        reports = sim.duplicates(events.succeeded(generation_id="gen_slow_dup"), copies=2, forged=1)
    assert all(r.delivered for r in reports)
    firsts = sorted(r.attempts[0].answer or "" for r in reports)
    assert firsts == ["delivery_in_progress", "delivery_in_progress", "processed"]
    assert all(r.attempts[-1].answer == "duplicate" for r in reports if len(r.attempts) > 1)
    assert [row["generationId"] for row in gallery.rows()] == ["gen_slow_dup"]
