"""Report the cost of one delivery through a real uvicorn server: the library's ASGI app
against a minimal hand-written ASGI receiver (HMAC check, ``json.loads``, call). Figures only.

    .venv/bin/python benchmarks/http_path.py [N]

Each app runs in its own single-worker uvicorn on 127.0.0.1; a keep-alive client sends N
signed deliveries over 8 connections. The cost is wall time per delivery.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

SECRET = "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1"
TEMPLATE = (
    '{"event":"generation.succeeded","data":{"generationId":"gen_%s","type":"text2img",'
    '"status":"succeeded","outputs":[{"png":"https://cdn.gptimage2.plus/o/g/0.png",'
    '"webp":"https://cdn.gptimage2.plus/o/g/0.webp","width":1024,"height":1536}],'
    '"createdAt":"2026-04-26T01:23:45.000Z","completedAt":"2026-04-26T01:23:50.000Z"}}'
)
CONNECTIONS = 8
LENGTH_0 = (b"content-length", b"0")


# The apps under test, built inside the uvicorn process (``--factory``).
def minimal_app() -> Callable[..., Any]:
    key = SECRET.encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        found = dict(scope["headers"])
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        status = 401
        if hmac.compare_digest(expected, found.get(b"x-gptimg-signature", b"")):
            json.loads(body)
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": [LENGTH_0]})
        await send({"type": "http.response.body", "body": b""})

    return app


def library_app() -> Any:
    from gptimg_webhooks import Webhooks
    from gptimg_webhooks.asgi import WebhookApp

    hooks = Webhooks(SECRET, store=os.environ["BENCH_STORE"], include_shared=False)
    if os.environ.get("BENCH_HANDLER") == "async":

        async def handler(event: object) -> None:
            pass

        hooks.on("generation.succeeded")(handler)
    else:
        hooks.on("generation.succeeded")(lambda event: None)
    return WebhookApp(hooks)


def request(i: int, run: str) -> bytes:
    body = (TEMPLATE % f"{run}_{i}").encode()
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    head = (
        f"POST /hooks/gptimg HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Gptimg-Signature: {digest}\r\nX-Gptimg-Delivery: {uuid.uuid4()}\r\n"
        f"X-Gptimg-Event: generation.succeeded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def blast(port: int, requests: list[bytes]) -> float:
    """Send every request over keep-alive connections; return seconds per request."""
    queue = list(reversed(requests))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            writer.write(queue.pop())
            status = (await reader.readline()).split()[1]
            if status != b"200":
                raise SystemExit(f"unexpected answer {status!r}")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return (time.perf_counter() - started) / len(requests)


def serve(factory: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "uvicorn", "--factory", f"http_path:{factory}"]
    argv += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    here = str(Path(__file__).parent)
    proc = subprocess.Popen(argv, cwd=here, env={**os.environ, **env})
    for _ in range(100):
        try:
            asyncio.run(asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1))
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{factory} did not start")


def measure(factory: str, port: int, n: int, env: dict[str, str]) -> list[float]:
    proc = serve(factory, port, env)
    try:
        asyncio.run(blast(port, [request(i, "warm") for i in range(500)]))
        return [
            asyncio.run(blast(port, [request(i, f"r{r}") for i in range(n)])) * 1e6
            for r in range(5)
        ]
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    with tempfile.TemporaryDirectory() as tmp:
        variants = [
            ("minimal hand-written ASGI receiver", "minimal_app", {}),
            ("library, ledger memory://", "library_app", {"BENCH_STORE": "memory://"}),
            (
                "library, ledger memory://, async handler",
                "library_app",
                {"BENCH_STORE": "memory://", "BENCH_HANDLER": "async"},
            ),
            (
                "library, ledger sqlite:// (the default)",
                "library_app",
                {"BENCH_STORE": f"sqlite:///{tmp}/bench.sqlite3"},
            ),
        ]
        results = {}
        for port, (label, factory, env) in enumerate(variants, start=18_700):
            results[label] = statistics.median(measure(factory, port, n, env))
    base = results["minimal hand-written ASGI receiver"]
    for label, cost in results.items():
        print(f"{label:42} {cost:7.1f} us/delivery  {cost / base:5.2f}x")
    print(f"(uvicorn, 1 worker, {CONNECTIONS} keep-alive connections; median of 5 runs of {n})")


if __name__ == "__main__":
    main()
