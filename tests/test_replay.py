"""``replay_now``: every record tried, each outcome returned, nothing else touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.asgi import WebhookApp
from gptimg_webhooks.replay import replay_now
from gptimg_webhooks.stores import State
from gptimg_webhooks.testing import WebhookClient, events

SECRET = "whsec_replay_tests_0123456789abcdef"


@pytest.fixture
def hooks(tmp_path: Path) -> Webhooks:
    """A receiver on a SQLite ledger whose handler fails for every generation but one."""
    receiver = Webhooks(SECRET, store=f"sqlite:///{tmp_path / 'r.db'}", include_shared=False)
    broken = {"gen_a", "gen_b", "gen_c"}

    @receiver.on("generation.succeeded")
    def save(event):  # type: ignore[no-untyped-def]
        if event.data.generation_id in broken:
            raise RuntimeError(f"down for {event.data.generation_id}")

    with WebhookClient(WebhookApp(receiver), SECRET) as client:
        for gid in sorted(broken):
            assert client.deliver(events.succeeded(generation_id=gid)).failed
        assert client.deliver(events.succeeded(generation_id="gen_ok")).processed
    broken.discard("gen_b")  # fixed since
    return receiver


def keys(hooks: Webhooks) -> dict[str, str]:
    return {r.generation_id or "": r.key for r in hooks.store.records()}


def test_every_key_is_tried_and_each_outcome_returned(hooks: Webhooks) -> None:
    k = keys(hooks)
    outcomes = replay_now(hooks, [k["gen_a"], k["gen_b"], k["gen_c"], k["gen_ok"], "f" * 64])
    got = [(o.key, o.status, o.ok, o.state) for o in outcomes]
    assert got == [
        (k["gen_a"], "dead", False, "dead"),
        (k["gen_b"], "processed", True, "done"),
        (k["gen_c"], "dead", False, "dead"),
        (k["gen_ok"], "not_replayable", False, "done"),
        ("f" * 64, "not_found", False, None),
    ]
    assert outcomes[0].error == "RuntimeError: down for gen_a"
    assert outcomes[0].attempt == 2 and outcomes[1].error is None


def test_only_the_keys_named_run(hooks: Webhooks) -> None:
    k = keys(hooks)
    (outcome,) = replay_now(hooks, [k["gen_b"]])
    assert outcome.status == "processed"
    states = {r.generation_id: (r.state, r.attempts) for r in hooks.store.records()}
    assert states["gen_a"] == (State.FAILED, 1)
    assert states["gen_c"] == (State.FAILED, 1)


def test_a_dead_record_runs_again_now_on_every_store(hooks: Webhooks) -> None:
    k = keys(hooks)
    replay_now(hooks, [k["gen_a"]])  # fails again: dead
    (outcome,) = replay_now(hooks, [k["gen_a"]])
    assert (outcome.status, outcome.ok, outcome.state, outcome.attempt) == (
        "dead",
        False,
        "dead",
        3,
    )
    assert hooks.store.get(k["gen_c"]).state is State.FAILED  # type: ignore[union-attr]


def test_outcomes_are_json_ready(hooks: Webhooks) -> None:
    (outcome,) = replay_now(hooks, [keys(hooks)["gen_b"]])
    assert outcome.as_json() == {
        "key": keys(hooks)["gen_b"],
        "status": "processed",
        "ok": True,
        "state": "done",
        "attempt": 2,
        "error": None,
    }


def test_the_module_imports_neither_click_nor_a_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gptimg_webhooks.replay; "
        "print(sorted(m for m in ('click', 'rich', 'django', 'flask', 'starlette') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
