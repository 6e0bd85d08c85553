"""Compare this tree's hot path with an earlier commit's, in one interleaved run.

    .venv/bin/python benchmarks/hot_path.py --against 716f339 [--rounds 6] [--n 3000]

Each round runs one process per (tree, setting): the library's full path
(``Webhooks.handle``, a memory ledger, a no-op sync handler) and a minimal hand-written
receiver (HMAC, ``json.loads``, the handler), timed in that process. A process's figure
is the ratio of the two, so machine noise that hits both cancels out. The earlier tree
is exported with ``git archive`` into a temporary directory; the measurement uses only
the API both trees share. Figures only, never a pass or fail.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import inspect
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

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_9f2c4e1ab7d84c0e93a1b5d6f7e8c2a1"
TEMPLATE = (
    '{"event":"generation.succeeded","data":{"generationId":"gen_%d","type":"text2img",'
    '"status":"succeeded","outputs":[{"png":"https://cdn.gptimage2.plus/o/g/0.png",'
    '"webp":"https://cdn.gptimage2.plus/o/g/0.webp","width":1024,"height":1536}],'
    '"createdAt":"2026-04-26T01:23:45.000Z","completedAt":"2026-04-26T01:23:50.000Z"}}'
)
#: The settings compared: the defaults, and the sync path run inline (the work an
#: earlier tree without a reply deadline did).
SETTINGS = ("default", "inline")

Run = Callable[[bytes, list[tuple[bytes, bytes]]], object]


def _measure(setting: str, n: int) -> dict[str, float]:
    """In a child process whose ``gptimg_webhooks`` is the tree under test."""
    from gptimg_webhooks import Webhooks, sign

    batch = []
    for i in range(n):
        body = (TEMPLATE % i).encode()
        batch.append(
            (
                body,
                [
                    (b"x-gptimg-signature", sign(body, SECRET).encode()),
                    (b"x-gptimg-delivery", str(uuid.uuid4()).encode()),
                    (b"x-gptimg-event", b"generation.succeeded"),
                ],
            )
        )
    options: dict[str, object] = {"store": f"memory://?max_records={n}"}
    options["include_shared"] = False
    has_deadline = "reply_deadline" in inspect.signature(Webhooks).parameters
    if setting == "inline" and has_deadline:
        options["reply_deadline"] = None
    key = SECRET.encode()

    def handler(payload: object) -> None:
        pass

    def minimal(body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
        found = dict(headers)
        expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, found.get(b"x-gptimg-signature", b"")):
            return 401
        handler(json.loads(body))
        return 200

    def timed(run: Run) -> float:
        gc.collect()
        start = time.perf_counter()
        for body, headers in batch:
            run(body, headers)
        return (time.perf_counter() - start) / n * 1e6

    library, floor = [], []
    for _ in range(5):
        hooks = Webhooks(SECRET, **options)  # type: ignore[arg-type]
        hooks.on("generation.succeeded")(handler)

        def full(
            body: bytes, headers: list[tuple[bytes, bytes]], hooks: Webhooks = hooks
        ) -> object:
            return hooks.handle("POST", headers, body)

        library.append(timed(full))
        floor.append(timed(minimal))
    lib, base = statistics.median(library), statistics.median(floor)
    return {"library_us": lib, "floor_us": base, "ratio": lib / base}


def _export(rev: str, into: Path) -> Path:
    """Write ``rev``'s ``src/`` under ``into``; return it."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _child(src: Path, setting: str, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = (
        "import json, sys; sys.path.insert(1, sys.argv[1]); from against import _measure; "
        "print(json.dumps(_measure(sys.argv[2], int(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), setting, str(n)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/hot_path.py --against")
    parser.add_argument("--against", required=True, metavar="REV", help="the earlier commit")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=3000, help="deliveries per timed loop")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gptimg-against-") as tmp:
        trees = {args.against: _export(args.against, Path(tmp)), "this tree": ROOT / "src"}
        runs = [(args.against, "default")] + [("this tree", setting) for setting in SETTINGS]
        ratios: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
        for round_ in range(args.rounds):
            for name, setting in runs:
                figures = _child(trees[name], setting, args.n)
                ratios[name, setting].append(figures["ratio"])
            print(
                f"round {round_ + 1}: "
                + ", ".join(
                    f"{name} {setting} {ratios[name, setting][-1]:.2f}x" for name, setting in runs
                )
            )
    print("\nthe full path as a multiple of the hand-written receiver, median of rounds:")
    for name, setting in runs:
        values = ratios[name, setting]
        print(
            f"  {name:>12} {setting:<8} {statistics.median(values):5.2f}x"
            f"  [{min(values):.2f}..{max(values):.2f}]"
        )
    old = statistics.median(ratios[args.against, "default"])
    for setting in SETTINGS:
        new = statistics.median(ratios["this tree", setting])
        print(f"this tree ({setting}) / {args.against}: {new / old:.2f}")


if __name__ == "__main__":
    main()
