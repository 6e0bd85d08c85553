"""The standalone worker command, as a real process on a shared SQLite ledger."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from gptimg_webhooks import Webhooks, sign
from gptimg_webhooks._core.ledger import State
from gptimg_webhooks.stores.sqlite import SQLiteStore
from tests.scale.conftest import ROOT, SECRET, spawned, wait_for, worker_argv
from tests.support.contract import payload

pytestmark = pytest.mark.slow


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "GPTIMG_WEBHOOK_SECRET": SECRET,
        "GPTIMG_WEBHOOK_STORE": f"sqlite:///{tmp_path / 'ledger.db'}",
        "GPTIMG_TEST_EFFECTS": str(tmp_path / "effects.db"),
        "GPTIMG_TEST_SLOW": "1.5",
        "PYTHONPATH": str(ROOT),
    }


def enqueue(env: dict[str, str], *generation_ids: str) -> None:
    hooks = Webhooks(SECRET, store=env["GPTIMG_WEBHOOK_STORE"], mode="deferred")
    for generation_id in generation_ids:
        body = payload(generation_id)
        headers = {
            "X-Gptimg-Signature": sign(body, SECRET),
            "X-Gptimg-Delivery": str(uuid.uuid4()),
            "X-Gptimg-Event": "generation.succeeded",
        }
        assert hooks.handle("POST", headers, body).status == 202
    hooks.close()


def effects(env: dict[str, str], phase: str = "effect") -> list[str]:
    path = Path(env["GPTIMG_TEST_EFFECTS"])
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            rows = conn.execute("SELECT generation_id FROM effects WHERE phase = ?", (phase,))
        except sqlite3.OperationalError:  # the worker made the file, not yet its table
            return []
        return sorted(r[0] for r in rows)


def states(env: dict[str, str]) -> dict[str, State]:
    store = SQLiteStore(env["GPTIMG_WEBHOOK_STORE"].removeprefix("sqlite:///"))
    return {str(r.generation_id): r.state for r in store.records()}


def test_once_processes_what_is_due_and_exits(sqlite_env: dict[str, str]) -> None:
    enqueue(sqlite_env, "gen_one", "gen_two", "gen_fail_three")
    argv = worker_argv("--once", "--max-attempts", "2", "--retry-delay", "0")
    result = subprocess.run(
        argv, cwd=ROOT, env=sqlite_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "stopped after 4 run(s)" in result.stderr, result.stderr  # gen_fail_three ran twice
    assert effects(sqlite_env) == ["gen_one", "gen_two"]
    assert states(sqlite_env) == {
        "gen_one": State.DONE,
        "gen_two": State.DONE,
        "gen_fail_three": State.DEAD,
    }


def test_sigterm_lets_the_running_handler_finish(sqlite_env: dict[str, str]) -> None:
    enqueue(sqlite_env, "gen_slow_term")
    with spawned(worker_argv("--poll-interval", "0.1"), sqlite_env) as proc:
        wait_for(lambda: effects(sqlite_env, "start"), 20, "the handler to start")
        assert proc.stop(signal.SIGTERM) == 0, proc.output()
        assert "finishing the runs under way" in proc.output()
    assert effects(sqlite_env) == ["gen_slow_term"]  # finished, not cut short
    assert states(sqlite_env) == {"gen_slow_term": State.DONE}


def test_bad_app_reference_is_a_clear_error(sqlite_env: dict[str, str]) -> None:
    for ref, code, message in [
        ("tests.apps.no_such_module:hooks", 4, "cannot load"),  # the app to import: unavailable
        ("tests.apps.effects_app", 2, "module:attribute"),
        ("tests.apps.effects_app:TABLE", 2, "not a gptimg_webhooks.Webhooks"),
    ]:
        argv = [a if a != "tests.apps.effects_app:hooks" else ref for a in worker_argv("--once")]
        result = subprocess.run(
            argv, cwd=ROOT, env=sqlite_env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == code, result.stderr
        assert message in result.stderr
        assert "Traceback" not in result.stderr
