"""The in-process suite: one delivery through the library beside the hand-written floor and
the peers (``standardwebhooks``, ``svix``, ``stripe``) verifying the same body under their own
schemes. Rounds are interleaved; each figure is the median of the rounds, with its spread.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from gptimg_webhooks import Webhooks
from gptimg_webhooks._core.events import GenerationSucceeded
from gptimg_webhooks._core.receiver import DEFAULT_REPLY_DEADLINE
from gptimg_webhooks.stores.memory import MemoryStore

from .common import EVENT, KEY, SECRET, body, headers, paired_ratio, summary

#: BENCH_SCALE shrinks every batch (the smoke test runs the suite in seconds with 0.02).
_SCALE = float(os.environ.get("BENCH_SCALE", "1"))
Batch = list[Any]
# A variant: (prepare(n, round) -> batch, run(batch) -> None)
Variant = tuple[Callable[[int, int], Batch], Callable[[Batch], None]]


def _noop(event: object) -> None:
    pass


def _signed(n: int, tag: str, size: int = 0) -> Batch:
    return [(p, headers(p)) for p in (body(f"{tag}{i}", size) for i in range(n))]


# The library ------------------------------------------------------------------------


def library(
    reply_deadline: float | None = DEFAULT_REPLY_DEADLINE, handlers: int = 1, size: int = 0
) -> Variant:
    hooks = Webhooks(
        SECRET,
        store=MemoryStore(max_records=1_000_000),
        include_shared=False,
        reply_deadline=reply_deadline,
    )
    for _ in range(handlers):
        hooks.on(EVENT)(_noop)
    handle = hooks.handle

    def prepare(n: int, r: int) -> Batch:
        return _signed(n, f"lib{id(hooks)}r{r}i", size)

    def run(batch: Batch) -> None:
        for payload, head in batch:
            handle("POST", head, payload)

    return prepare, run


def library_duplicate(reply_deadline: float | None = DEFAULT_REPLY_DEADLINE) -> Variant:
    """Every delivery is a retry of one the ledger marked done already."""
    prepare0, run0 = library(reply_deadline)
    hooks_run = run0

    def prepare(n: int, r: int) -> Batch:
        batch = prepare0(n, r)
        hooks_run(batch)  # the first copies: processed, not timed
        return batch

    return prepare, hooks_run


# The hand-written floor ---------------------------------------------------------------


def hand_written(pads: bool = False, size: int = 0) -> Variant:
    """HMAC + compare_digest + a bounded-dict dedup + model_validate_json + the handler."""
    seen: OrderedDict[str, None] = OrderedDict()
    limit = 1_000_000
    handler = _noop
    if pads:
        block = KEY.ljust(64, b"\0")
        inner0 = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        outer0 = hashlib.sha256(bytes(b ^ 0x5C for b in block))

        def digest(payload: bytes) -> str:
            inner = inner0.copy()
            inner.update(payload)
            outer = outer0.copy()
            outer.update(inner.digest())
            return outer.hexdigest()

    else:

        def digest(payload: bytes) -> str:
            return hmac.new(KEY, payload, hashlib.sha256).hexdigest()

    def receive(payload: bytes, head: list[tuple[bytes, bytes]]) -> int:
        found = dict(head)
        sig = found.get(b"x-gptimg-signature", b"").decode()
        if not hmac.compare_digest(digest(payload), sig):
            return 401
        key = hashlib.sha256(payload).hexdigest()
        if key in seen:
            return 200
        event = GenerationSucceeded.model_validate_json(payload)
        handler(event)
        seen[key] = None
        if len(seen) > limit:
            seen.popitem(last=False)
        return 200

    def prepare(n: int, r: int) -> Batch:
        return _signed(n, f"hw{id(seen)}{pads}r{r}i", size)

    def run(batch: Batch) -> None:
        for payload, head in batch:
            receive(payload, head)

    return prepare, run


def sha256_only() -> Variant:
    def prepare(n: int, r: int) -> Batch:
        return [body(f"sha{r}i{i}") for i in range(n)]

    def run(batch: Batch) -> None:
        for payload in batch:
            hashlib.sha256(payload).digest()

    return prepare, run


# Peers, each under its own scheme -------------------------------------------------------

PEER_SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def standard_webhooks() -> Variant:
    from standardwebhooks.webhooks import Webhook

    hook = Webhook(PEER_SECRET)

    def prepare(n: int, r: int) -> Batch:
        out = []
        for i in range(n):
            payload = body(f"sw{r}i{i}")
            msg_id = f"msg_{uuid.uuid4().hex}"
            now = datetime.now(tz=timezone.utc)
            sig = hook.sign(msg_id, now, payload.decode())
            head = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": sig,
            }
            out.append((payload, head))
        return out

    def run(batch: Batch) -> None:
        for payload, head in batch:
            hook.verify(payload, head)

    return prepare, run


def svix_verify() -> Variant:
    from svix.webhooks import Webhook

    hook = Webhook(PEER_SECRET)

    def prepare(n: int, r: int) -> Batch:
        out = []
        for i in range(n):
            payload = body(f"sx{r}i{i}")
            msg_id = f"msg_{uuid.uuid4().hex}"
            now = datetime.now(tz=timezone.utc)
            sig = hook.sign(msg_id, now, payload.decode())
            head = {
                "svix-id": msg_id,
                "svix-timestamp": str(int(now.timestamp())),
                "svix-signature": sig,
            }
            out.append((payload, head))
        return out

    def run(batch: Batch) -> None:
        for payload, head in batch:
            verified = hook.verify(payload, head)
            if isinstance(verified, str | bytes):
                json.loads(verified)

    return prepare, run


def stripe_construct() -> Variant:
    import stripe

    secret = "whsec_test_0123456789"

    def prepare(n: int, r: int) -> Batch:
        out = []
        for i in range(n):
            payload = body(f"st{r}i{i}")
            stamp = int(time.time())
            mac = hmac.new(
                secret.encode(), f"{stamp}.".encode() + payload, hashlib.sha256
            ).hexdigest()
            out.append((payload, f"t={stamp},v1={mac}"))
        return out

    def run(batch: Batch) -> None:
        for payload, head in batch:
            stripe.Webhook.construct_event(payload, head, secret)

    return prepare, run


# Running ------------------------------------------------------------------------------


def interleave(
    variants: dict[str, Variant], n: int | dict[str, int], rounds: int
) -> dict[str, list[float]]:
    """Run every variant once per round, in a rotating order; return µs per delivery."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            prepare, run = variants[name]
            count = max(10, int((n[name] if isinstance(n, dict) else n) * _SCALE))
            batch = prepare(count, r)
            gc.collect()
            started = time.perf_counter()
            run(batch)
            out[name].append((time.perf_counter() - started) / count * 1e6)
    return out


def _peers() -> dict[str, Variant]:
    found: dict[str, Variant] = {}
    for name, factory in (
        ("standardwebhooks Webhook.verify", standard_webhooks),
        ("svix Webhook.verify + json.loads", svix_verify),
        ("stripe Webhook.construct_event", stripe_construct),
    ):
        try:
            found[name] = factory()
        except ImportError:
            print(f"  (skipped {name}: install the 'bench' extra)")
    return found


#: The library with the receiver's default settings (the label the report reads).
DEFAULT = f"library, reply_deadline={DEFAULT_REPLY_DEADLINE} (default)"


def headline(quick: bool) -> dict[str, Any]:
    """The per-delivery figures of targets 1: library, floor, peers, in one interleaved run."""
    variants: dict[str, Variant] = {
        DEFAULT: library(),
        "library, reply_deadline=None": library(None),
        "library, duplicate (default)": library_duplicate(),
        "library, duplicate, reply_deadline=None": library_duplicate(None),
        "hand-written": hand_written(False),
        "hand-written, precomputed pads": hand_written(True),
        **_peers(),
        "SHA-256 of the body alone": sha256_only(),
    }
    n, rounds = (1000, 5) if quick else (3000, 11)
    for _, (prepare, run) in variants.items():  # warm every path once
        run(prepare(200, -1))
    samples = interleave(variants, n, rounds)
    return _figures(samples, "hand-written")


def _figures(samples: dict[str, list[float]], base: str) -> dict[str, Any]:
    return {
        name: {
            "us": summary(values),
            f"vs {base}": paired_ratio(values, samples[base]),
        }
        for name, values in samples.items()
    }


def ratios(samples: dict[str, list[float]], a: str, b: str) -> dict[str, float]:
    return paired_ratio(samples[a], samples[b])


def body_sizes(quick: bool) -> dict[str, Any]:
    """Cost against body size: the library (inline) beside the hand-written floor."""
    sizes: Sequence[int] = (
        (345, 4096, 65536, 1 << 20) if quick else (345, 4096, 65536, 262144, 1 << 20)
    )
    out: dict[str, Any] = {}
    for size in sizes:
        n = max(20, min(2000, 600_000 // size)) if not quick else max(10, min(500, 200_000 // size))
        variants = {
            "library": library(None, size=size if size > 345 else 0),
            "hand-written": hand_written(False, size=size if size > 345 else 0),
        }
        samples = interleave(variants, n, 3 if quick else 7)
        out[str(size)] = _figures(samples, "hand-written")
    return out


def handler_counts(quick: bool) -> dict[str, Any]:
    """Cost against the number of handlers a delivery runs (inline, no-op handlers)."""
    counts = (1, 4, 16, 64)
    variants = {str(c): library(None, handlers=c) for c in counts}
    samples = interleave(variants, 500 if quick else 2000, 3 if quick else 7)
    return {name: {"us": summary(v)} for name, v in samples.items()}


#: The twin of the ASGI pair in process (the base of its ratios).
ASGI_TWIN = "twin Starlette route, async handler"


def _asgi(app: Any) -> Variant:
    """Drive an ASGI app in process, one request after another on one event loop."""
    import asyncio

    async def receive_all(batch: Batch) -> None:
        for payload, head in batch:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/hooks/gptimg",
                "raw_path": b"/hooks/gptimg",
                "query_string": b"",
                "root_path": "",
                "headers": head,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
            }
            messages = [{"type": "http.request", "body": payload, "more_body": False}]

            async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
                return messages.pop() if messages else {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start" and message["status"] != 200:
                    raise RuntimeError(f"the app answered {message['status']}")

            await app(scope, receive, send)

    def prepare(n: int, r: int) -> Batch:
        return _signed(n, f"asgi{id(app)}r{r}i")

    def run(batch: Batch) -> None:
        asyncio.run(receive_all(batch))

    return prepare, run


def asgi_apps(quick: bool) -> dict[str, Any]:
    """The ASGI pair of the HTTP suite (async handler, memory ledger) without the server.

    What is left is the app's own cost per request: the twin parses Starlette's
    ``Request`` and routes; the library's middleware verifies, records, parses and runs.
    """
    from unittest import mock

    from . import apps

    def build(make: Callable[[], Any], **env: str) -> Any:
        with mock.patch.dict(os.environ, env):  # the builders read their settings from it
            return make()

    variants = {
        "library ASGI app, async handler (default)": _asgi(
            build(apps.library_starlette, BENCH_HANDLER="async")
        ),
        "library ASGI app, async handler, reply_deadline=None": _asgi(
            build(apps.library_starlette, BENCH_HANDLER="async", BENCH_DEADLINE="none")
        ),
        ASGI_TWIN: _asgi(build(apps.twin_starlette, BENCH_HANDLER="async")),
    }
    for _, (prepare, run) in variants.items():
        run(prepare(200, -1))
    samples = interleave(variants, 1000 if quick else 3000, 3 if quick else 9)
    return _figures(samples, ASGI_TWIN)


# The reply deadline's thread hop ----------------------------------------------------------

#: The library's hop (the base of the hop section's ratios).
HOP = "library: Runners.call of a no-op"


def _hops(n: int, r: int) -> Batch:
    return [None] * n


def _library_hop() -> Variant:
    from gptimg_webhooks._core.handoff import Runners

    runners = Runners(max_threads=1, name="bench-hop")

    def run(batch: Batch) -> None:
        call = runners.call
        for _ in batch:
            call(DEFAULT_REPLY_DEADLINE, _noop, None).result()

    return _hops, run


def _bare_hop(getcpu: Callable[[], int], follow_cpu: bool) -> Variant:
    """Two threads and two pipes, nothing else: the least a hop can cost here.

    With ``follow_cpu`` the runner is woken on the waiter's CPU and lets go once awake,
    as the library's runners do (two ``sched_setaffinity`` calls per hop).
    """
    import select
    import threading

    go_read, go_write = os.pipe()
    done_read, done_write = os.pipe()
    os.set_blocking(done_read, False)
    poll = select.poll()
    poll.register(done_read, select.POLLIN)
    home = os.sched_getaffinity(0)
    started = threading.Event()
    tid: list[int] = []

    def serve() -> None:
        tid.append(threading.get_native_id())
        started.set()
        while True:
            os.read(go_read, 1)
            if follow_cpu:
                os.sched_setaffinity(0, home)
            os.write(done_write, b"\0")

    threading.Thread(target=serve, daemon=True).start()
    started.wait()
    timeout = int(DEFAULT_REPLY_DEADLINE * 1000)

    def run(batch: Batch) -> None:
        for _ in batch:
            if follow_cpu:
                os.sched_setaffinity(tid[0], (getcpu(),))
            os.write(go_write, b"\0")
            poll.poll(timeout)
            os.read(done_read, 64)

    return _hops, run


def hop(quick: bool) -> dict[str, Any] | None:
    """The sync reply deadline's thread hop: the library's against two bare threads."""
    from gptimg_webhooks._core.handoff import cpu_finder

    getcpu = cpu_finder()  # where threads cannot follow a CPU, the comparison means nothing
    if getcpu is None:
        return None
    variants = {
        HOP: _library_hop(),
        "bare: two threads and two pipes, runner woken on the waiter's CPU": _bare_hop(
            getcpu, True
        ),
        "bare: two threads and two pipes, left to the scheduler": _bare_hop(getcpu, False),
    }
    for _, (prepare, run) in variants.items():
        run(prepare(500, -1))
    samples = interleave(variants, 3000 if quick else 10000, 5 if quick else 9)
    return _figures(samples, HOP)


def profile(quick: bool, top: int = 14) -> dict[str, Any]:
    """Where the full path's time goes: cProfile of the library, own time per function."""
    import cProfile
    import pstats

    prepare, run = library(None)
    run(prepare(200, -1))
    batch = prepare(max(10, int((1000 if quick else 3000) * _SCALE)), 0)
    profiler = cProfile.Profile()
    profiler.enable()
    run(batch)
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = sum(row[2] for row in stats.stats.values())  # type: ignore[attr-defined]
    rows = []
    for (path, line, func), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = path.split("/src/")[-1] if "/src/" in path else path.rsplit("/", 1)[-1]
        rows.append(
            {
                "function": f"{where}:{line}({func})" if line else func,
                "calls_per_delivery": calls / len(batch),
                "own_share": own / total if total else 0.0,
                "cumulative_share": cumulative / total if total else 0.0,
            }
        )
    rows.sort(key=lambda r: r["own_share"], reverse=True)
    return {"deliveries": len(batch), "reply_deadline": None, "top": rows[:top]}
