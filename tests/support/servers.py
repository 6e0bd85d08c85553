"""Start real servers (uvicorn, gunicorn, Django) on 127.0.0.1 for the duration of a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    """A started server: its base URL and the process that leads its process group."""

    base: str
    proc: subprocess.Popen[bytes]

    def pids(self) -> list[int]:
        """Return the ids of every live process of the server's group (master and workers)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.proc.pid:
                        found.append(int(entry.name))
                except OSError:
                    continue
        return sorted(found)

    def rss(self) -> int:
        """Return the summed resident memory of the server's processes, in bytes."""
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


@contextmanager
def running(
    argv: list[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    ready_path: str = "/generations",
    timeout: float = 30.0,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run ``argv`` until the block ends; yield its base URL once ``ready_path`` answers.

    The server's output goes to ``log_path`` when given (for tests that read it), else to a
    temporary file shown only when the block fails.
    """
    with started(
        argv,
        port=port,
        env=env,
        cwd=cwd,
        ready_path=ready_path,
        timeout=timeout,
        log_path=log_path,
    ) as server:
        yield server.base


@contextmanager
def started(
    argv: list[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    ready_path: str = "/generations",
    timeout: float = 30.0,
    log_path: Path | None = None,
) -> Iterator[Server]:
    """Run ``argv`` until the block ends; yield it as a :class:`Server` once it answers."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    opened = open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile()  # noqa: SIM115
    with opened as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"{argv[0]} exited:\n{log.read().decode(errors='replace')}")
                try:
                    if httpx.get(base + ready_path, timeout=1.0).status_code < 500:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(
                        f"{argv[0]} not ready:\n{log.read().decode(errors='replace')}"
                    )
                time.sleep(0.1)
            try:
                yield Server(base, proc)
            except BaseException as exc:
                # A failure against a server is only diagnosable with the server's own log.
                log.seek(0)
                tail = log.read().decode(errors="replace")[-6000:]
                exc.add_note(f"--- {argv[0]} log (tail) ---\n{tail}")
                raise
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def uvicorn_argv(app: str, port: int, workers: int = 1) -> list[str]:
    return [
        str(BIN / "uvicorn"),
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "info",
        "--no-access-log",
    ]


def gunicorn_argv(app: str, port: int, workers: int = 4) -> list[str]:
    return [
        str(BIN / "gunicorn"),
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--log-level",
        "info",
        "--timeout",
        "60",
    ]
