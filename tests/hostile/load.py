"""Load and soak against the examples under real servers on 127.0.0.1; figures and checks.

    scripts/load [--deliveries 20000] [--concurrency 64] [--stores sqlite,redis,postgres]
                 [--servers starlette-uvicorn,flask-gunicorn] [--workers 4]
    scripts/soak [--minutes 10] [--rate 100] [--servers starlette-uvicorn,flask-gunicorn]

Load: every request is one of: a new delivery (75%), a duplicate of an earlier one with the
same delivery id (20%), or a replay of an earlier body under a forged fresh id (5%), sent at
``concurrency`` at once. Like the provider, a sender retries 409 (in progress) and a
dropped connection, a bounded number of times. Afterwards every new delivery must have run
its handler exactly once (``GET /generations``), no request may have been answered 5xx, and
no ledger record may be left in progress. Soak: the same mix at a steady rate for minutes,
with a short retention and pruning every few seconds; it samples the servers' resident
memory and the ledger's size. Traffic goes to 127.0.0.1 only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gptimg_webhooks import sign
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.stores import open_store
from tests.hostile.examples import serve
from tests.hostile.table import PATH, standard
from tests.support.servers import Server
from tests.support.services import POSTGRES_URL, REDIS_URL

SECRET = "whsec_hostile_load_secret"
RETRIES = 40  # a sender gives up on one request after this many 409s or dropped connections


@contextmanager
def store_url(kind: str, data_dir: Path) -> Iterator[str]:
    """Yield a fresh ledger URL of ``kind`` (sqlite, redis, postgres); remove it afterwards."""
    tag = uuid.uuid4().hex[:8]
    if kind == "sqlite":
        yield f"sqlite:///{data_dir / 'ledger.sqlite3'}"
    elif kind == "redis":
        import redis

        prefix = f"gptimg-hostile-{tag}:"
        try:
            yield f"{REDIS_URL}?prefix={prefix}"
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            for i in range(0, len(keys), 500):
                client.delete(*keys[i : i + 500])
            client.close()
    elif kind == "postgres":
        import psycopg

        table = f"gptimg_hostile_{tag}"
        try:
            yield f"{POSTGRES_URL}?table={table}"
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_counters")
    else:
        raise ValueError(f"unknown store {kind!r}")


@dataclass(frozen=True)
class Answer:
    """One answer that was not 2xx (``status`` 0: the connection dropped), as sent back."""

    status: int
    reason: str  # the library's ``error``/``status`` word, or the exception's type
    body: str  # the answer's text (cut at 500 characters), or the exception's message
    at: float  # seconds since the run started, when the answer came
    latency: float  # seconds the request took
    delivery: str
    attempt: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def reason_of(response: httpx.Response) -> str:
    """Return the word the library's JSON answer names (``error`` or ``status``), else '-'."""
    try:
        data = response.json()
    except ValueError:
        return "-"  # not the library's answer (a server's own error page, say)
    if isinstance(data, dict):
        return str(data.get("error") or data.get("status") or "-")
    return "-"


@dataclass
class Figures:
    """What one run measured."""

    server: str
    store: str
    requests: int = 0
    new: int = 0
    duplicates: int = 0
    replays: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: Every answer that was not 2xx, and every dropped connection, as it happened.
    answers: list[Answer] = field(default_factory=list)
    #: Where the servers' own output and the JSON lines of ``answers`` are kept, if anywhere.
    log_dir: Path | None = None
    lost: int = 0
    twice: int = 0
    in_progress: int = 0
    gave_up: int = 0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000 if ordered else 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> list[str]:
        """Return one line per (status, reason) of the non-2xx answers, with when they came."""
        groups: dict[tuple[int, str], list[Answer]] = {}
        for answer in self.answers:
            groups.setdefault((answer.status, answer.reason), []).append(answer)
        lines = []
        for (status, reason), answers in sorted(groups.items()):
            times = [a.at for a in answers]
            slowest = max(a.latency for a in answers)
            lines.append(
                f"    {status or 'dropped'} {reason}: {len(answers)} answers "
                f"between {min(times):.1f} s and {max(times):.1f} s, slowest {slowest:.2f} s; "
                f"e.g. {answers[0].body[:200]!r}"
            )
        return lines

    def line(self) -> str:
        other = {s: n for s, n in sorted(self.statuses.items()) if s != 200}
        return (
            f"{self.server:22} {self.store:8} {self.requests:6d} req "
            f"({self.new} new, {self.duplicates} dup, {self.replays} forged) "
            f"{self.requests / self.seconds:6.0f} req/s  p50 {self.percentile(0.5):6.1f} ms  "
            f"p99 {self.percentile(0.99):7.1f} ms  lost {self.lost}  twice {self.twice}  "
            f"5xx {self.server_errors}  in progress {self.in_progress}  gave up {self.gave_up}  "
            f"non-200 answers {other}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "store": self.store,
            "requests": self.requests,
            "new": self.new,
            "req_per_s": round(self.requests / self.seconds, 1),
            "p50_ms": round(self.percentile(0.5), 2),
            "p99_ms": round(self.percentile(0.99), 2),
            "lost": self.lost,
            "twice": self.twice,
            "5xx": self.server_errors,
            "in_progress": self.in_progress,
            "statuses": dict(self.statuses),
            "non_2xx": Counter(f"{a.status} {a.reason}" for a in self.answers),
        }


def plan(n: int, tag: str, seed: int = 0) -> list[tuple[str, bytes, str]]:
    """Return ``n`` requests ``(generation id, body, delivery id)``: 75/20/5 new/dup/forged."""
    rng = random.Random(seed)
    sent: list[tuple[str, bytes, str]] = []
    out: list[tuple[str, bytes, str]] = []
    for i in range(n):
        roll = rng.random()
        if sent and roll < 0.20:
            out.append(rng.choice(sent))  # a provider retry: same body, same id
        elif sent and roll < 0.25:
            gid, body, _ = rng.choice(sent)
            out.append((gid, body, str(uuid.uuid4())))  # a replay under a forged id
        else:
            gid = f"gen_load_{tag}_{i}"
            body = json.dumps(standard("succeeded", gid), separators=(",", ":")).encode()
            item = (gid, body, str(uuid.uuid4()))
            sent.append(item)
            out.append(item)
    return out


async def blast(
    base: str, requests: list[tuple[str, bytes, str]], concurrency: int, figures: Figures
) -> None:
    """Send every request, ``concurrency`` at a time, retrying 409 and dropped connections."""
    url = base + PATH
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=1.0)
    queue: asyncio.Queue[tuple[str, bytes, str]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)

    run_started = time.perf_counter()

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def sender() -> None:
            while not queue.empty():
                _, body, delivery = queue.get_nowait()
                headers = {
                    "X-Gptimg-Signature": sign(body, SECRET),
                    "X-Gptimg-Delivery": delivery,
                    "X-Gptimg-Event": "generation.succeeded",
                    "Content-Type": "application/json",
                }
                for attempt in range(RETRIES):
                    started = time.perf_counter()
                    try:
                        response = await client.post(url, content=body, headers=headers)
                    except httpx.TransportError as exc:
                        now = time.perf_counter()
                        figures.statuses[0] += 1
                        figures.answers.append(
                            Answer(
                                0,
                                type(exc).__name__,
                                str(exc)[:500],
                                now - run_started,
                                now - started,
                                delivery,
                                attempt,
                            )
                        )
                        await asyncio.sleep(0.2)
                        continue
                    now = time.perf_counter()
                    figures.latencies.append(now - started)
                    figures.statuses[response.status_code] += 1
                    reason = reason_of(response)
                    figures.words[reason] += 1
                    if not response.is_success:
                        figures.answers.append(
                            Answer(
                                response.status_code,
                                reason,
                                response.text[:500],
                                now - run_started,
                                now - started,
                                delivery,
                                attempt,
                            )
                        )
                    if response.status_code not in (409, 503):
                        break
                    # Like the provider (sped up): a copy in progress or a ledger outage is
                    # retried; the 503 still counts as a 5xx in the figures.
                    await asyncio.sleep(0.05 * (attempt + 1))
                else:
                    figures.gave_up += 1

        await asyncio.gather(*(sender() for _ in range(concurrency)))


def check(base: str, store: str, requests: list[tuple[str, bytes, str]], figures: Figures) -> None:
    """Count lost and twice-run deliveries, and records left in progress."""
    new = {gid for gid, _, _ in requests}
    rows = httpx.get(base + "/generations", timeout=120).json()
    seen = Counter(r["generationId"] for r in rows if r["generationId"] in new)
    figures.lost = len(new - set(seen))
    figures.twice = sum(1 for n in seen.values() if n > 1)
    ledger = open_store(store, create=False)
    figures.in_progress = len(ledger.records(State.PROCESSING, limit=1000))


@contextmanager
def starving(server: Server, pause: float) -> Iterator[None]:
    """Stop the server's workers for ``pause`` s in every ``2 * pause`` s, until the block ends.

    What an overloaded machine does to a process, without burning CPU to do it: the
    answers of Redis or PostgreSQL arrive while the worker cannot run, and are read late.
    """
    if pause <= 0:
        yield
        return
    done = threading.Event()

    def signal_workers(signum: int) -> None:
        for pid in server.pids():
            if pid != server.proc.pid:  # the workers; the leader only supervises
                with suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def starve() -> None:
        while not done.wait(pause):
            signal_workers(signal.SIGSTOP)
            try:
                done.wait(pause)
            finally:
                signal_workers(signal.SIGCONT)

    thread = threading.Thread(target=starve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def run_load(
    server: str,
    store_kind: str,
    n: int,
    concurrency: int,
    workers: int = 4,
    log_dir: Path | None = None,
    starve: float = 0.0,
) -> Figures:
    """Serve one example on one ledger, send ``n`` requests, and return the figures.

    With ``log_dir``, keep the server's output there (``<server>-<store>.log``) and every
    non-2xx answer as JSON lines (``<server>-<store>-answers.jsonl``). With ``starve``,
    stop the workers that long in every twice that long (:func:`starving`).
    """
    figures = Figures(server, store_kind, log_dir=log_dir)
    log_path = log_dir / f"{server}-{store_kind}.log" if log_dir else None
    tag = uuid.uuid4().hex[:8]
    requests = plan(n, tag)
    ids = [gid for gid, _, _ in requests]
    firsts = len(set(ids))
    figures.requests, figures.new = n, firsts
    figures.replays = sum(1 for i, r in enumerate(requests) if r[0] in set(ids[:i]))
    with tempfile.TemporaryDirectory(prefix="gptimg-load-") as tmp:
        data = Path(tmp)
        with (
            store_url(store_kind, data) as store,
            serve(server, data, [SECRET], store, workers=workers, log_path=log_path) as running,
        ):
            started = time.perf_counter()
            with starving(running, starve):
                asyncio.run(blast(running.base, requests, concurrency, figures))
            figures.seconds = time.perf_counter() - started
            check(running.base, store, requests, figures)
    if log_dir is not None:
        with open(log_dir / f"{server}-{store_kind}-answers.jsonl", "w") as out:
            for answer in figures.answers:
                out.write(json.dumps(answer.as_dict()) + "\n")
    dup_same_id = Counter(requests)
    figures.duplicates = sum(n - 1 for n in dup_same_id.values())
    figures.replays = n - figures.new - figures.duplicates
    return figures


@dataclass
class SoakFigures:
    """RSS and ledger samples of one soak."""

    server: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (t, rss, records)
    load: Figures | None = None

    def growth(self, warm_after: float) -> int:
        warm = [rss for t, rss, _ in self.samples if t >= warm_after]
        return warm[-1] - warm[0] if len(warm) > 1 else 0

    def line(self, warm_after: float) -> str:
        peak_records = max(r for _, _, r in self.samples)
        warm = [rss / 2**20 for t, rss, _ in self.samples if t >= warm_after]
        growth = self.growth(warm_after) / 2**20
        return (
            f"{self.server:22} {len(self.samples)} samples; RSS warm {warm[0]:.1f} MiB "
            f"-> end {warm[-1]:.1f} MiB (growth {growth:+.1f} MiB, max {max(warm):.1f}); "
            f"ledger records max {peak_records}"
        )


def soak(
    server: str,
    seconds: float,
    rate: float,
    *,
    retention: float = 30.0,
    prune_interval: float = 5.0,
    sample_every: float = 10.0,
    workers: int = 4,
) -> SoakFigures:
    """Deliver at ``rate`` per second for ``seconds`` with a short retention; sample RSS."""
    result = SoakFigures(server)
    figures = Figures(server, "sqlite")
    tag = uuid.uuid4().hex[:8]
    options = {"retention": retention, "prune_interval": prune_interval}
    with tempfile.TemporaryDirectory(prefix="gptimg-soak-") as tmp:
        data = Path(tmp)
        store = f"sqlite:///{data / 'ledger.sqlite3'}"
        with serve(server, data, [SECRET], store, options=options, workers=workers) as running:
            ledger = open_store(store, create=False)
            everything: list[tuple[str, bytes, str]] = []

            async def drive() -> None:
                started = time.monotonic()
                next_sample = 0.0
                batch_no = 0
                while (elapsed := time.monotonic() - started) < seconds:
                    if elapsed >= next_sample:
                        count = len(ledger.records(limit=10**6)) if batch_no else 0
                        result.samples.append((elapsed, running.rss(), count))
                        next_sample += sample_every
                    # Duplicates and replays come from the same second: well inside the
                    # retention, so each must still be recognised.
                    requests = plan(int(rate), f"{tag}_{batch_no}", seed=batch_no)
                    everything.extend(requests)
                    figures.requests += len(requests)
                    await blast(running.base, requests, 16, figures)
                    batch_no += 1
                    await asyncio.sleep(max(0.0, batch_no - (time.monotonic() - started)))
                count = len(ledger.records(limit=10**6))
                result.samples.append((time.monotonic() - started, running.rss(), count))

            started = time.perf_counter()
            asyncio.run(drive())
            figures.seconds = time.perf_counter() - started
            check(running.base, store, everything, figures)
    figures.new = len({gid for gid, _, _ in everything})
    figures.duplicates = sum(n - 1 for n in Counter(everything).values())
    figures.replays = figures.requests - figures.new - figures.duplicates
    result.load = figures
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load")
    load.add_argument("--deliveries", type=int, default=20_000)
    load.add_argument("--concurrency", type=int, default=64)
    load.add_argument("--stores", default="sqlite,redis,postgres")
    load.add_argument("--servers", default="starlette-uvicorn,flask-gunicorn")
    load.add_argument("--workers", type=int, default=4)
    load.add_argument(
        "--starve",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop the server's workers SECONDS in every 2 x SECONDS (an overloaded machine)",
    )
    load.add_argument(
        "--logs",
        type=Path,
        help="keep the servers' output and every non-2xx answer here (default: a new /tmp dir)",
    )
    soaking = sub.add_parser("soak")
    soaking.add_argument("--minutes", type=float, default=10.0)
    soaking.add_argument("--rate", type=float, default=100.0, help="requests per second")
    soaking.add_argument("--servers", default="starlette-uvicorn,flask-gunicorn")
    soaking.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    failed = False
    if args.command == "load":
        log_dir = args.logs or Path(tempfile.mkdtemp(prefix="gptimg-load-logs-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        print(f"server logs and non-2xx answers: {log_dir}", flush=True)
        for server in args.servers.split(","):
            for store in args.stores.split(","):
                before = os.getloadavg()
                figures = run_load(
                    server,
                    store,
                    args.deliveries,
                    args.concurrency,
                    args.workers,
                    log_dir,
                    args.starve,
                )
                after = os.getloadavg()
                print(figures.line(), flush=True)
                print(
                    f"    load average (1, 5, 15 min) before {before[0]:.1f} {before[1]:.1f} "
                    f"{before[2]:.1f}, after {after[0]:.1f} {after[1]:.1f} {after[2]:.1f}",
                    flush=True,
                )
                for text in figures.summary():
                    print(text, flush=True)
                failed |= bool(figures.lost or figures.twice or figures.server_errors)
                failed |= bool(figures.in_progress or figures.gave_up)
    else:
        for server in args.servers.split(","):
            result = soak(server, args.minutes * 60, args.rate, workers=args.workers)
            warm_after = min(60.0, args.minutes * 60 / 4)
            print(result.line(warm_after), flush=True)
            assert result.load is not None
            print("   ", result.load.line(), flush=True)
            for text in result.load.summary():
                print(text, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
