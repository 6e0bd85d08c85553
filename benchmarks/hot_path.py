"""Report the in-process cost of one delivery: the library's full path against a minimal
hand-written receiver (HMAC check, ``json.loads``, call the handler). Figures only.

    .venv/bin/python benchmarks/hot_path.py [N]
"""

from __future__ import annotations

import gc
import hashlib
import hmac
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from gptimg_webhooks import Webhooks, sign

SECRET = "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1"
TEMPLATE = (
    '{"event":"generation.succeeded","data":{"generationId":"gen_%d","type":"text2img",'
    '"status":"succeeded","outputs":[{"png":"https://cdn.gptimage2.plus/o/g/0.png",'
    '"webp":"https://cdn.gptimage2.plus/o/g/0.webp","width":1024,"height":1536}],'
    '"createdAt":"2026-04-26T01:23:45.000Z","completedAt":"2026-04-26T01:23:50.000Z"}}'
)


def deliveries(n: int) -> list[tuple[bytes, list[tuple[bytes, bytes]]]]:
    out = []
    for i in range(n):
        body = (TEMPLATE % i).encode()
        headers = [
            (b"x-gptimg-signature", sign(body, SECRET).encode()),
            (b"x-gptimg-delivery", str(uuid.uuid4()).encode()),
            (b"x-gptimg-event", b"generation.succeeded"),
        ]
        out.append((body, headers))
    return out


def minimal(handler: Callable[[object], None]) -> Callable[[bytes, list[tuple[bytes, bytes]]], int]:
    key = SECRET.encode()

    def receive(body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
        found = dict(headers)
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, found.get(b"x-gptimg-signature", b"")):
            return 401
        handler(json.loads(body))
        return 200

    return receive


def timed(run: Callable[[bytes, list[tuple[bytes, bytes]]], object], n: int) -> float:
    batch = deliveries(n)
    gc.collect()
    start = time.perf_counter()
    for body, headers in batch:
        run(body, headers)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    library, baseline = [], []
    for _ in range(5):
        hooks = Webhooks(SECRET, store=f"memory://?max_records={n}", include_shared=False)
        hooks.on("generation.succeeded")(lambda event: None)
        library.append(timed(lambda b, h, hooks=hooks: hooks.handle("POST", h, b), n))
        baseline.append(timed(minimal(lambda payload: None), n))
    lib, base = statistics.median(library), statistics.median(baseline)
    print(f"full path (verify, ledger memory://, typed parse, dispatch): {lib:6.1f} us/delivery")
    print(f"minimal hand-written receiver (hmac, json.loads, dispatch):   {base:6.1f} us/delivery")
    print(f"ratio: {lib / base:.2f}x (in-process, no HTTP; median of 5 runs of {n})")


if __name__ == "__main__":
    main()
