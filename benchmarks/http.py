"""The HTTP suite: real servers on 127.0.0.1 under ``wrk``, each adapter beside its twin.

Servers are pinned to CPU 0 and ``wrk`` (one thread) to CPU 1 when the machine has two;
every request ``wrk`` sends is a distinct signed delivery read from a file this suite
writes, so no ledger ever answers a duplicate it was not meant to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import body, http_request, paired_ratio, summary

ROOT = Path(__file__).resolve().parents[1]

LUA = r"""
local path = os.getenv("BENCH_REQUESTS")
local reqs, i, wrapped = {}, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  local f = assert(io.open(path, "rb"))
  while true do
    local line = f:read("*l")
    if not line then break end
    reqs[#reqs + 1] = f:read(tonumber(line))
  end
  f:close()
end
function request()
  i = i + 1
  if i > #reqs then i = 1; wrapped = wrapped + 1 end
  return reqs[i]
end
function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wrapped") or 0) end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,"wrapped":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean, w))
end
"""


def ensure_wrk() -> str:
    """Return wrk's path; install Debian's package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("  installing wrk with apt-get ...", flush=True)
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet)
        found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: apt-get install wrk (or run without --http)")
    return found


def _version(wrk_path: str) -> str:
    done = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].split(" [")[0] if lines else "wrk"


def _pin(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def write_requests(path: Path, count: int, tag: str, size: int = 0) -> Path:
    """Write ``count`` distinct signed requests, each as ``<length>\\n<raw bytes>``."""
    with path.open("wb") as out:
        for i in range(count):
            raw = http_request(body(f"{tag}x{i}", size))
            out.write(b"%d\n" % len(raw) + raw)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """One server variant: how to start it and what it is for."""

    name: str
    kind: str  # uvicorn | gunicorn
    app: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        py = sys.executable
        if self.kind == "uvicorn":
            factory = ["--factory"] if not self.app.endswith(")") else []
            app = self.app.removesuffix("()")
            return [
                py,
                "-m",
                "uvicorn",
                *factory,
                app,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        return [
            py,
            "-m",
            "gunicorn",
            self.app,
            "-w",
            "1",
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--timeout",
            "60",
        ]

    def rss_kib(self) -> int:
        """The server's resident memory (its worker's, under gunicorn)."""
        assert self.proc is not None
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        best = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        best = max(best, int(line.split()[1]))
            except OSError:
                pass
        return best


@contextmanager
def serving(server: Server, log: Path) -> Iterator[Server]:
    server.port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **server.env}
    with log.open("wb") as out:
        server.proc = subprocess.Popen(
            _pin(0) + server.argv(),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.proc.poll() is not None:
                    raise SystemExit(f"{server.name} exited:\n{log.read_text()[-3000:]}")
                try:
                    socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{server.name} did not start") from None
                    time.sleep(0.1)
            yield server
        finally:
            _stop(server.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def wrk(
    wrk_path: str, lua: Path, server: Server, requests: Path, conns: int, seconds: float
) -> dict[str, Any]:
    """Run wrk against ``server`` for ``seconds``; return its figures."""
    argv = [
        *_pin(1),
        wrk_path,
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        f"http://127.0.0.1:{server.port}/",
    ]
    env = {**os.environ, "BENCH_REQUESTS": str(requests)}
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not line:
        raise SystemExit(f"wrk failed: {done.stdout}\n{done.stderr}")
    out: dict[str, Any] = json.loads(line[-1])
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    return out


# The plan -------------------------------------------------------------------------------


def plan(tmp: Path) -> dict[str, tuple[Server, str]]:
    """Every server of the comparison runs, each named with its twin (or '' for none)."""
    mem = "memory://?max_records=1000000"
    sqlite = f"sqlite:///{tmp}/ledger.sqlite3"
    s = Server
    return {
        "ASGI library, async handler": (
            s(
                "lib-async",
                "uvicorn",
                "benchmarks.apps:library_starlette",
                {"BENCH_HANDLER": "async", "BENCH_STORE": mem},
            ),
            "ASGI twin, async handler",
        ),
        "ASGI twin, async handler": (
            s(
                "twin-async",
                "uvicorn",
                "benchmarks.apps:twin_starlette",
                {"BENCH_HANDLER": "async"},
            ),
            "",
        ),
        "ASGI library, sync handler": (
            s("lib-sync", "uvicorn", "benchmarks.apps:library_starlette", {"BENCH_STORE": mem}),
            "ASGI twin, sync handler (threadpool)",
        ),
        "ASGI twin, sync handler (threadpool)": (
            s("twin-sync", "uvicorn", "benchmarks.apps:twin_starlette", {}),
            "",
        ),
        "ASGI library, sync handler, SQLite ledger": (
            s(
                "lib-sqlite",
                "uvicorn",
                "benchmarks.apps:library_starlette",
                {"BENCH_STORE": sqlite},
            ),
            "ASGI library, sync handler",
        ),
        "Flask library (gunicorn, 1 sync worker)": (
            s("flask-lib", "gunicorn", "benchmarks.apps:library_flask()", {"BENCH_STORE": mem}),
            "Flask twin (gunicorn, 1 sync worker)",
        ),
        "Flask twin (gunicorn, 1 sync worker)": (
            s("flask-twin", "gunicorn", "benchmarks.apps:twin_flask()", {}),
            "",
        ),
        "Django library (gunicorn, 1 sync worker)": (
            s(
                "django-lib",
                "gunicorn",
                "benchmarks.django_site:wsgi()",
                {"DJANGO_SETTINGS_MODULE": "benchmarks.django_site", "BENCH_STORE": mem},
            ),
            "Django twin (gunicorn, 1 sync worker)",
        ),
        "Django twin (gunicorn, 1 sync worker)": (
            s(
                "django-twin",
                "gunicorn",
                "benchmarks.django_site:wsgi()",
                {"DJANGO_SETTINGS_MODULE": "benchmarks.django_site", "BENCH_SIDE": "twin"},
            ),
            "",
        ),
        "Django library (uvicorn, ASGI)": (
            s(
                "django-lib-asgi",
                "uvicorn",
                "benchmarks.django_site:asgi()",
                {"DJANGO_SETTINGS_MODULE": "benchmarks.django_site", "BENCH_STORE": mem},
            ),
            "Django twin (uvicorn, ASGI)",
        ),
        "Django twin (uvicorn, ASGI)": (
            s(
                "django-twin-asgi",
                "uvicorn",
                "benchmarks.django_site:asgi()",
                {"DJANGO_SETTINGS_MODULE": "benchmarks.django_site", "BENCH_SIDE": "twin"},
            ),
            "",
        ),
    }


def run(quick: bool, log: Any = print) -> dict[str, Any]:
    """Run the whole HTTP suite, bounded in time; return its figures."""
    wrk_path = ensure_wrk()
    seconds = 2.0 if quick else 5.0
    rounds = 1 if quick else 3
    conns = 16
    per_file = 12_000 if quick else 25_000
    results: dict[str, Any] = {
        "settings": {
            "seconds": seconds,
            "rounds": rounds,
            "connections": conns,
            "pinned": bool(_pin(0)),
            "wrk": _version(wrk_path),
        }
    }
    with tempfile.TemporaryDirectory(prefix="gptimg-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        lua = tmp / "deliveries.lua"
        lua.write_text(LUA)
        variants = plan(tmp)
        log(f"  starting {len(variants)} servers ...")
        for server, _ in variants.values():
            stack.enter_context(serving(server, tmp / f"{server.name}.log"))
        files = [write_requests(tmp / f"r{r}.req", per_file, f"r{r}") for r in range(rounds)]
        warm = write_requests(tmp / "warm.req", 2000, "warm")
        for server, _ in variants.values():
            wrk(wrk_path, lua, server, warm, 4, 1)
        samples: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
        names = list(variants)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for label in order:
                figures = wrk(wrk_path, lua, variants[label][0], files[r], conns, seconds)
                samples[label].append(figures)
                log(
                    f"  {label:45} {figures['rps']:8.0f} req/s  "
                    f"p99 {figures['p99_us'] / 1000:6.1f} ms"
                )
        results["adapters"] = _compare(samples, variants)
        # How throughput grows with connections: the ASGI pair.
        results["concurrency"] = _concurrency(
            wrk_path, lua, tmp, variants, quick, per_file, seconds, log
        )
    results["deferred"] = deferred(wrk_path, quick, log)
    results["memory_under_load"] = memory_under_load(wrk_path, quick, log)
    return results


def _compare(
    samples: dict[str, list[dict[str, Any]]], variants: dict[str, tuple[Server, str]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, runs in samples.items():
        rps = [r["rps"] for r in runs]
        entry: dict[str, Any] = {
            "rps": summary(rps),
            "p50_ms": summary([r["p50_us"] / 1000 for r in runs]),
            "p99_ms": summary([r["p99_us"] / 1000 for r in runs]),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": sum(r["socket_errors"] for r in runs),
            "wrapped": sum(r["wrapped"] for r in runs),
        }
        twin = variants[label][1]
        if twin:
            other = samples[twin]
            entry["vs"] = twin
            entry["throughput_ratio"] = paired_ratio(rps, [r["rps"] for r in other])
            entry["p99_ratio"] = paired_ratio(
                [r["p99_us"] for r in runs], [r["p99_us"] for r in other]
            )
        out[label] = entry
    return out


def _concurrency(
    wrk_path: str,
    lua: Path,
    tmp: Path,
    variants: dict[str, tuple[Server, str]],
    quick: bool,
    per_file: int,
    seconds: float,
    log: Any,
) -> dict[str, Any]:
    levels: Sequence[int] = (1, 16, 256) if quick else (1, 4, 16, 64, 256)
    pair = ("ASGI library, async handler", "ASGI twin, async handler")
    out: dict[str, Any] = {label: {} for label in pair}
    for level in levels:
        requests = write_requests(tmp / f"c{level}.req", per_file, f"c{level}")
        for label in pair:
            figures = wrk(wrk_path, lua, variants[label][0], requests, level, seconds)
            out[label][str(level)] = {
                "rps": figures["rps"],
                "p99_ms": figures["p99_us"] / 1000,
                "wrapped": figures["wrapped"],
            }
            log(
                f"  {label:30} c={level:<4} {figures['rps']:8.0f} req/s  "
                f"p99 {figures['p99_us'] / 1000:7.1f} ms"
            )
    return out


def deferred(wrk_path: str, quick: bool, log: Any) -> dict[str, Any]:
    """Deferred mode, every handler sleeping 1 s: how fast are the answers?"""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gptimg-bench-") as name:
        tmp = Path(name)
        lua = tmp / "deliveries.lua"
        lua.write_text(LUA)
        requests = write_requests(tmp / "d.req", 8000 if quick else 20_000, "deferred")
        for ledger, url in (
            ("SQLite", f"sqlite:///{tmp}/deferred.sqlite3"),
            ("memory", "memory://?max_records=1000000"),
        ):
            server = Server(
                f"deferred-{ledger}",
                "uvicorn",
                "benchmarks.apps:library_starlette",
                {"BENCH_MODE": "deferred", "BENCH_HANDLER": "sleep", "BENCH_STORE": url},
            )
            with serving(server, tmp / f"{server.name}.log"):
                figures = wrk(wrk_path, lua, server, requests, 16, 3 if quick else 8)
            out[ledger] = {
                "rps": figures["rps"],
                "p50_ms": figures["p50_us"] / 1000,
                "p99_ms": figures["p99_us"] / 1000,
                "max_ms": figures["max_us"] / 1000,
                "non_2xx": figures["non_2xx"],
            }
            log(
                f"  deferred, {ledger} ledger, handlers sleep 1 s, c=16: "
                f"{figures['rps']:6.0f} req/s p99 {figures['p99_us'] / 1000:.1f} ms"
            )
    return out


def memory_under_load(wrk_path: str, quick: bool, log: Any) -> dict[str, Any]:
    """Resident memory of an ASGI receiver with a bounded memory ledger under steady load."""
    seconds = 6 if quick else 24
    with tempfile.TemporaryDirectory(prefix="gptimg-bench-") as name:
        tmp = Path(name)
        lua = tmp / "deliveries.lua"
        lua.write_text(LUA)
        requests = write_requests(tmp / "m.req", 15_000 if quick else 60_000, "mem")
        server = Server(
            "memory",
            "uvicorn",
            "benchmarks.apps:library_starlette",
            {"BENCH_STORE": "memory://?max_records=5000"},
        )
        with serving(server, tmp / "memory.log"):
            start = server.rss_kib()
            proc = subprocess.Popen(
                [
                    *_pin(1),
                    wrk_path,
                    "-t1",
                    "-c16",
                    f"-d{seconds}s",
                    "-s",
                    str(lua),
                    f"http://127.0.0.1:{server.port}/",
                ],
                env={**os.environ, "BENCH_REQUESTS": str(requests)},
                stdout=subprocess.PIPE,
                text=True,
            )
            trace = []
            began = time.monotonic()
            while proc.poll() is None and time.monotonic() - began < seconds + 30:
                trace.append((round(time.monotonic() - began, 1), server.rss_kib()))
                time.sleep(1)
            stdout, _ = proc.communicate(timeout=30)
        figures = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    out = {
        "rss_start_kib": start,
        "trace_kib": trace,
        "requests": figures["requests"],
        "max_records": 5000,
        "wrapped": figures["wrapped"],
    }
    half = [k for t, k in trace if t >= seconds / 2]
    if half:
        out["rss_second_half_kib"] = summary(half)
    log(
        f"  memory under load: {start} KiB idle, {trace[-1][1] if trace else 0} KiB after "
        f"{figures['requests']} deliveries"
    )
    return out
