"""Find (and start, when installed but stopped) the real services tests need.

Locally a missing service skips its tests with a visible reason; under ``CI=true`` the
same condition fails them, so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("GPTIMG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "GPTIMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def unavailable(reason: str) -> NoReturn:
    """Skip locally; fail under CI=true."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(host: str, port: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _listening(host, port):
            return True
        time.sleep(0.2)
    return False


def ensure_redis() -> str:
    """Return the Redis URL, starting the local server if it is installed but stopped."""
    if not _listening("127.0.0.1", 6379) and shutil.which("redis-server"):
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                "6379",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            check=False,
            capture_output=True,
        )
        _wait("127.0.0.1", 6379)
    if not _listening("127.0.0.1", 6379):
        unavailable("Redis is not running on 127.0.0.1:6379 and could not be started")
    return REDIS_URL


def ensure_postgres() -> str:
    """Return the PostgreSQL URL, starting the local cluster if it is installed but stopped."""
    if not _listening("127.0.0.1", 5432) and shutil.which("pg_ctlcluster"):
        versions = sorted(p.name for p in Path("/etc/postgresql").glob("*"))
        if versions:
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                check=False,
                capture_output=True,
            )
            _wait("127.0.0.1", 5432)
    if not _listening("127.0.0.1", 5432):
        unavailable("PostgreSQL is not running on 127.0.0.1:5432 and could not be started")
    return POSTGRES_URL
