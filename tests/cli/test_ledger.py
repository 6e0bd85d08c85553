from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.stores import State, open_store
from gptimg_webhooks.testing import WebhookClient, events

from .conftest import SECRET, Run

USER_HOOKS = """
from pathlib import Path
from gptimg_webhooks import Webhooks

hooks = Webhooks("{secret}", store="{store}", include_shared=False)

@hooks.on("generation.succeeded")
def save(event):
    with Path("saved.txt").open("a") as f:
        f.write(event.data.generation_id + "\\n")
"""


@pytest.fixture
def ledger(tmp_path: Path) -> tuple[str, str, str]:
    """A SQLite ledger with one done and one failed record; yields (url, done, failed keys)."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    hooks = Webhooks(SECRET, store=url, include_shared=False)

    @hooks.on("generation.succeeded")
    def save(event):  # type: ignore[no-untyped-def]
        if event.data.generation_id == "gen_broken":
            raise RuntimeError("disk full")

    with WebhookClient(hooks_app(hooks), SECRET) as client:
        ok = client.deliver(events.succeeded(generation_id="gen_fine"))
        bad = client.deliver(events.succeeded(generation_id="gen_broken"))
    assert ok.processed and bad.failed
    hooks.close()
    store = open_store(url)
    keys = {r.generation_id: r.key for r in store.records()}
    store.close()
    return url, keys["gen_fine"], keys["gen_broken"]


def hooks_app(hooks: Webhooks):  # type: ignore[no-untyped-def]
    from gptimg_webhooks.asgi import WebhookApp

    return WebhookApp(hooks)


def test_list_by_state(cli: Run, ledger: tuple[str, str, str]) -> None:
    url, done_key, failed_key = ledger
    everything = json.loads(cli("ledger", "list", "--store", url, "--json").stdout)
    assert {(r["key"], r["state"]) for r in everything} == {
        (done_key, "done"),
        (failed_key, "failed"),
    }
    failed = json.loads(cli("ledger", "list", "--store", url, "--state", "failed", "--json").stdout)
    assert [r["error"] for r in failed] == ["RuntimeError: disk full"]
    table = cli("ledger", "list", "--store", url).stdout
    assert failed_key[:12] in table and "gen_broken" in table


def test_show_by_key_prefix_includes_the_kept_body(cli: Run, ledger: tuple[str, str, str]) -> None:
    url, _, failed_key = ledger
    done = cli("ledger", "show", failed_key[:10], "--store", url, "--json")
    assert done.returncode == 0
    record = json.loads(done.stdout)
    assert record["state"] == "failed"
    assert json.loads(record["body"])["data"]["generationId"] == "gen_broken"
    missing = cli("ledger", "show", "ffffffffffff", "--store", url)
    assert missing.returncode == 2 and "no record" in missing.stderr


def test_replay_without_app_marks_pending_for_workers(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url, _, failed_key = ledger
    done = cli("ledger", "replay", "--state", "failed", "--store", url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pending" in done.stdout
    store = open_store(url)
    assert store.get(failed_key).state is State.PENDING  # type: ignore[union-attr]
    store.close()


def test_replay_with_app_runs_the_handlers_now(
    cli: Run, ledger: tuple[str, str, str], tmp_path: Path
) -> None:
    url, done_key, failed_key = ledger
    (tmp_path / "userhooks.py").write_text(USER_HOOKS.format(secret=SECRET, store=url))
    done = cli("ledger", "replay", failed_key, "--app", "userhooks:hooks", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == [{"key": failed_key, "ok": True, "result": "processed"}]
    assert (tmp_path / "saved.txt").read_text() == "gen_broken\n"
    store = open_store(url)
    assert store.get(failed_key).state is State.DONE  # type: ignore[union-attr]
    store.close()
    again = cli("ledger", "replay", done_key, "--store", url)
    assert again.returncode == 1 and "is done" in again.stdout


def test_prune_removes_settled_records_older_than_asked(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url = ledger[0]
    kept = json.loads(cli("ledger", "prune", "--store", url, "--json").stdout)
    assert kept == {"removed": 0}  # nothing is 30 days old
    pruned = json.loads(
        cli("ledger", "prune", "--store", url, "--older-than", "0s", "--json").stdout
    )
    assert pruned["removed"] == 2  # done and failed alike, past the retention asked for
    assert json.loads(cli("ledger", "list", "--store", url, "--json").stdout) == []
