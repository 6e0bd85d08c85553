"""The HTTP contract every adapter holds, checked against a live server.

The server must run one of the examples (or follow their contract): handlers record to
``/generations``; the generation id prefixes of
:data:`gptimg_webhooks.testing.gallery.DEMO_BEHAVIOURS` make handlers slow, flaky or
stalling past the reply deadline.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import httpx

from gptimg_webhooks import sign
from gptimg_webhooks.testing import Simulator, events, signed
from gptimg_webhooks.testing.simulator import Clock

EVENT = "generation.succeeded"


def payload(generation_id: str, event: str = EVENT, **extra: object) -> bytes:
    data: dict[str, object] = {
        "generationId": generation_id,
        "type": "text2img",
        "status": "succeeded" if event == EVENT else "failed",
        "outputs": [
            {
                "png": f"https://cdn.gptimage2.plus/o/{generation_id}/0.png",
                "webp": f"https://cdn.gptimage2.plus/o/{generation_id}/0.webp",
                "width": 1024,
                "height": 1024,
            }
        ]
        if event == EVENT
        else [],
        "error": None if event == EVENT else "content policy",
        "createdAt": "2026-04-26T01:23:45.000Z",
        "completedAt": "2026-04-26T01:23:50.000Z",
        **extra,
    }
    return json.dumps({"event": event, "data": data}, separators=(",", ":")).encode()


def headers(
    body: bytes, secret: str, event: str = EVENT, delivery: str | None = None
) -> dict[str, str]:
    return {
        "X-Gptimg-Signature": sign(body, secret),
        "X-Gptimg-Delivery": delivery or str(uuid.uuid4()),
        "X-Gptimg-Event": event,
        "Content-Type": "application/json",
    }


@dataclass
class Case:
    name: str
    status: int


def check_contract(base: str, secret: str, path: str = "/hooks/gptimg") -> list[Case]:
    """Run every row of the contract table against ``base``; return the rows checked."""
    url = base + path
    done: list[Case] = []
    tag = uuid.uuid4().hex[:8]

    def expect(name: str, response: httpx.Response, status: int) -> None:
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        if status >= 400:
            assert response.json()["error"], name
        done.append(Case(name, status))

    with httpx.Client(timeout=10) as client:

        def reset_guard() -> None:
            # The endpoint guard counts signed rejections in a row (it answers 2xx at the
            # 6th); the table checks each rejection's own answer, so each starts afresh.
            ok = payload(f"gen_reset_{uuid.uuid4().hex[:10]}")
            assert client.post(url, content=ok, headers=headers(ok, secret)).status_code == 200

        body = payload(f"gen_new_{tag}")
        h = headers(body, secret)
        expect("verified new", client.post(url, content=body, headers=h), 200)
        expect("duplicate same id", client.post(url, content=body, headers=h), 200)
        replay = {**h, "X-Gptimg-Delivery": str(uuid.uuid4())}
        expect("duplicate forged fresh id", client.post(url, content=body, headers=replay), 200)
        # The body ran: its unsigned event header no longer matters (not event_mismatch).
        relabelled = {**h, "X-Gptimg-Event": "generation.failed"}
        response = client.post(url, content=body, headers=relabelled)
        expect("duplicate with another event header", response, 200)
        assert response.json()["status"] == "duplicate", response.text

        slow = payload(f"gen_slow_{tag}")

        async def concurrent() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as ac:
                first = asyncio.create_task(
                    ac.post(url, content=slow, headers=headers(slow, secret))
                )
                await asyncio.sleep(0.5)
                second = await ac.post(url, content=slow, headers=headers(slow, secret))
                return [(await first).status_code, second.status_code]

        # Under load the later copy can win the lease; either way exactly one is refused.
        statuses = sorted(asyncio.run(concurrent()))
        assert statuses == [200, 409], statuses
        done.append(Case("duplicate in progress", 409))

        for name, sig in [
            ("signature missing", None),
            ("signature empty", ""),
            ("signature malformed", "sha256=" + sign(body, secret)),
            ("signature wrong", sign(body, secret + "x")),
        ]:
            b = payload(f"gen_sig_{tag}")
            h = headers(b, secret)
            if sig is None:
                del h["X-Gptimg-Signature"]
            else:
                h["X-Gptimg-Signature"] = sig
            expect(name, client.post(url, content=b, headers=h), 401)

        b = payload(f"gen_hdr_{tag}")
        for name, change in [
            ("delivery missing", {"X-Gptimg-Delivery": None}),
            ("delivery malformed", {"X-Gptimg-Delivery": "not-a-uuid"}),
            ("event missing", {"X-Gptimg-Event": None}),
            ("event disagrees with body", {"X-Gptimg-Event": "generation.failed"}),
        ]:
            h = {k: v for k, v in {**headers(b, secret), **change}.items() if v is not None}
            reset_guard()
            expect(name, client.post(url, content=b, headers=h), 400)

        big = b'{"event":"generation.succeeded","pad":"' + b"x" * (2 << 20) + b'"}'
        expect("body over cap", client.post(url, content=big, headers=headers(big, secret)), 413)

        gz = gzip.compress(body)
        h = {**headers(gz, secret), "Content-Encoding": "gzip"}
        expect("content-encoding gzip", client.post(url, content=gz, headers=h), 415)

        for name, raw in [
            ("invalid utf-8", b'{"event":"generation.succeeded","data":"\xff"}'),
            (
                "duplicate keys",
                b'{"event":"generation.succeeded","event":"generation.succeeded","data":{}}',
            ),
            (
                "NaN",
                b'{"event":"generation.succeeded","data":{"generationId":"g","costCredits":NaN}}',
            ),
            (
                "deep nesting",
                b'{"event":"generation.succeeded","data":' + b"[" * 64 + b"]" * 64 + b"}",
            ),
            (
                "huge integer",
                b'{"event":"generation.succeeded","data":{"generationId":"g","costCredits":'
                + b"9" * 400
                + b"}}",
            ),
            ("not json", b"event=generation.succeeded"),
        ]:
            reset_guard()
            expect(
                f"strict json: {name}",
                client.post(url, content=raw, headers=headers(raw, secret)),
                400,
            )

        flaky = payload(f"gen_flaky_{tag}")
        h = headers(flaky, secret)
        expect("handler raised", client.post(url, content=flaky, headers=h), 500)
        expect("retry after handler raised", client.post(url, content=flaky, headers=h), 200)

        expect("method GET", client.get(url), 405)

        # JSON.stringify of a string cut mid-emoji: refused as input, never a 503.
        cut = payload(f"gen_cut_{tag}", event="generation.failed", error="boom \ud83d")
        h = headers(cut, secret, event="generation.failed")
        reset_guard()
        response = client.post(url, content=cut, headers=h)
        expect("lone surrogate", response, 400)
        assert response.json()["error"] == "invalid_payload"

        stall = payload(f"gen_stall_{tag}")
        started = time.monotonic()
        response = client.post(url, content=stall, headers=headers(stall, secret))
        took = time.monotonic() - started
        expect("reply deadline", response, 202)
        assert response.json()["status"] == "processing", response.text
        assert took < 4.8, took  # inside the provider's 5 s, the handler still running

        unknown = json.dumps(
            {"event": "generation.cancelled", "data": {"generationId": f"gen_u_{tag}"}}
        ).encode()
        h = headers(unknown, secret, event="generation.cancelled")
        expect("unknown event", client.post(url, content=unknown, headers=h), 200)

        rows = client.get(base + "/generations").json()
    seen = Counter(r["generationId"] for r in rows)
    assert seen[f"gen_new_{tag}"] == 1
    assert seen[f"gen_slow_{tag}"] == 1
    assert seen[f"gen_flaky_{tag}"] == 1
    assert seen[f"gen_u_{tag}"] == 0
    assert seen[f"gen_cut_{tag}"] == 0
    # The stalled handler finishes behind the answer, once.
    deadline = time.monotonic() + 15
    while Counter(r["generationId"] for r in rows)[f"gen_stall_{tag}"] == 0:
        assert time.monotonic() < deadline, "the stalled handler never finished"
        time.sleep(0.25)
        rows = httpx.get(base + "/generations", timeout=10).json()
    assert Counter(r["generationId"] for r in rows)[f"gen_stall_{tag}"] == 1
    endpoint_stays_enabled(base, secret, path)
    return done


def endpoint_stays_enabled(base: str, secret: str, path: str = "/hooks/gptimg") -> None:
    """Play the provider (real 5 s timeout, retries sped up) at the guard's worst cases.

    Ten handlers in a row that sleep past the reply deadline and then fail, and ten
    signed deliveries in a row that must be refused: the endpoint is never disabled.
    """
    tag = uuid.uuid4().hex[:8]
    with Simulator(base + path, secret, clock=Clock(600)) as sim:
        stalls = [events.succeeded(generation_id=f"gen_stallfail_{tag}_{i}") for i in range(10)]
        reports = []
        for i in range(0, len(stalls), 3):  # below the servers' 4 workers: none waits in line
            reports += sim.concurrent(stalls[i : i + 3])
        for report in reports:
            assert report.outcome == "delivered", report.attempts
            assert report.attempts[0].status == 202, report.attempts
            assert report.attempts[0].latency < 5.0, report.attempts
        assert not sim.disabled
        for i in range(10):
            sample = events.succeeded(generation_id=f"gen_refused_{tag}_{i}")
            mismatched = signed(sample, secret).with_headers(event="generation.failed")
            report = sim.deliver(mismatched)
            assert report.outcome in ("delivered", "failed"), report.outcome
            assert not sim.disabled, [a.status for a in report.attempts]
        assert sim.consecutive_failures < 8


def duplicate_storm(base: str, secret: str, n: int = 500, path: str = "/hooks/gptimg") -> None:
    """Send ``n`` deliveries three times at once (twice same id, once forged fresh id).

    Then ``/generations`` must list each generation exactly once.
    """
    tag = uuid.uuid4().hex[:8]
    url = base + path
    ids = [f"gen_storm_{tag}_{i}" for i in range(n)]

    async def storm() -> list[int]:
        # Expire idle connections well before the server's 5 s keep-alive: reusing one the
        # server is closing at that instant is a client-side race (uvicorn#824), not a receiver bug.
        limits = httpx.Limits(max_connections=64, keepalive_expiry=1.0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            sem = asyncio.Semaphore(48)

            async def post(body: bytes, h: dict[str, str]) -> int:
                async with sem:
                    # Like the provider, retry an answer of 409 ("in progress") and a dropped
                    # connection; exactly-once must hold whichever copy gets through.
                    status = 0  # 0: no answer at all
                    for _ in range(40):
                        try:
                            status = (await client.post(url, content=body, headers=h)).status_code
                        except httpx.TransportError:
                            status = 0
                        if status not in (0, 409):
                            return status
                        await asyncio.sleep(0.05 if status else 0.2)
                    return status

            tasks = []
            for gid in ids:
                body = payload(gid)
                h = headers(body, secret)
                forged = {**h, "X-Gptimg-Delivery": str(uuid.uuid4())}
                tasks += [post(body, h), post(body, h), post(body, forged)]
            return await asyncio.gather(*tasks)

    statuses = asyncio.run(storm())
    # 202 "processing": a copy answered at the reply deadline (a loaded host) runs on behind.
    assert set(statuses) <= {200, 202}, Counter(statuses)
    assert Counter(statuses)[200] >= 2 * n, Counter(statuses)
    deadline = time.monotonic() + 30
    while True:
        rows = httpx.get(base + "/generations", timeout=30).json()
        seen = Counter(
            r["generationId"] for r in rows if r["generationId"].startswith(f"gen_storm_{tag}")
        )
        if set(seen) == set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(seen) == set(ids)
    assert set(seen.values()) == {1}, [g for g, c in seen.items() if c != 1][:10]
