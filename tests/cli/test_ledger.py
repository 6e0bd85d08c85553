from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptimg_webhooks import Webhooks
from gptimg_webhooks.stores import State, open_store
from gptimg_webhooks.testing import WebhookClient, events, signed

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
    assert "queued" in done.stdout
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
    (outcome,) = json.loads(done.stdout)
    assert (outcome["key"], outcome["ok"], outcome["status"]) == (failed_key, True, "processed")
    assert (outcome["state"], outcome["attempt"]) == ("done", 2)
    assert (tmp_path / "saved.txt").read_text() == "gen_broken\n"
    store = open_store(url)
    assert store.get(failed_key).state is State.DONE  # type: ignore[union-attr]
    store.close()
    again = cli("ledger", "replay", done_key, "--store", url)
    assert again.returncode == 1 and "not_replayable" in again.stdout


STILL_BROKEN_HOOKS = """
from gptimg_webhooks import Webhooks

hooks = Webhooks("{secret}", store="{store}", include_shared=False)

@hooks.on("generation.succeeded")
def save(event):
    if event.data.generation_id != "gen_fixed":
        raise RuntimeError("still broken: " + event.data.generation_id)
"""


@pytest.fixture
def three_failed(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A SQLite ledger with three failed records; yields (url, {generation id: key})."""
    url = f"sqlite:///{tmp_path / 'failing.sqlite3'}"
    hooks = Webhooks(SECRET, store=url, include_shared=False)

    @hooks.on("generation.succeeded")
    def save(event):  # type: ignore[no-untyped-def]
        raise RuntimeError("down")

    with WebhookClient(hooks_app(hooks), SECRET) as client:
        for gid in ("gen_one", "gen_fixed", "gen_two"):
            assert client.deliver(events.succeeded(generation_id=gid)).failed
    hooks.close()
    store = open_store(url)
    keys = {r.generation_id or "": r.key for r in store.records()}
    store.close()
    (tmp_path / "brokenhooks.py").write_text(STILL_BROKEN_HOOKS.format(secret=SECRET, store=url))
    return url, keys


def test_replay_tries_every_record_and_reports_each_when_handlers_fail_again(
    cli: Run, three_failed: tuple[str, dict[str, str]]
) -> None:
    url, keys = three_failed
    done = cli("ledger", "replay", "--state", "failed", "--app", "brokenhooks:hooks", "--json")
    assert done.returncode == 1  # some failed again
    assert "Traceback" not in done.stderr, done.stderr
    outcomes = {o["key"]: o for o in json.loads(done.stdout)}
    assert set(outcomes) == set(keys.values())  # every record was tried
    assert outcomes[keys["gen_fixed"]]["status"] == "processed"
    for gid in ("gen_one", "gen_two"):
        again = outcomes[keys[gid]]
        assert (again["ok"], again["status"], again["state"]) == (False, "dead", "dead")
        assert again["error"] == f"RuntimeError: still broken: {gid}"
    store = open_store(url)
    states = {r.generation_id: r.state for r in store.records()}
    store.close()
    assert states == {"gen_one": State.DEAD, "gen_fixed": State.DONE, "gen_two": State.DEAD}


def test_replay_of_one_key_runs_that_record_and_nothing_else(
    cli: Run, three_failed: tuple[str, dict[str, str]]
) -> None:
    url, keys = three_failed
    done = cli("ledger", "replay", keys["gen_one"][:12], "--app", "brokenhooks:hooks", "--json")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert [o["key"] for o in json.loads(done.stdout)] == [keys["gen_one"]]
    store = open_store(url)
    others = {r.generation_id: (r.state, r.attempts) for r in store.records()}
    store.close()
    assert others["gen_fixed"] == (State.FAILED, 1)  # untouched, though it would succeed
    assert others["gen_two"] == (State.FAILED, 1)
    assert others["gen_one"] == (State.DEAD, 2)


def test_replay_prints_one_line_per_record_for_people(
    cli: Run, three_failed: tuple[str, dict[str, str]]
) -> None:
    done = cli("ledger", "replay", "--state", "failed", "--app", "brokenhooks:hooks")
    assert done.returncode == 1
    assert done.stdout.count(" dead ") == 2 and "processed" in done.stdout
    assert "1/3 replayed" in done.stdout
    assert "Traceback" not in done.stderr


def test_show_finds_a_record_by_the_short_delivery_id_send_prints(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url, _, failed_key = ledger
    store = open_store(url)
    rec = store.get(failed_key)
    store.close()
    assert rec is not None
    for ref in (rec.delivery_id, rec.delivery_id[:8], rec.delivery_id[:8].upper()):
        done = cli("ledger", "show", ref, "--store", url, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["key"] == failed_key


def test_show_with_an_ambiguous_prefix_lists_the_candidates(cli: Run, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twins.sqlite3'}"
    hooks = Webhooks(SECRET, store=url, include_shared=False)
    ids = ["abcdef12-0000-4000-8000-000000000001", "abcdef12-0000-4000-8000-000000000002"]
    with WebhookClient(hooks_app(hooks), SECRET) as client:
        for delivery_id in ids:
            sample = signed(events.succeeded(), SECRET).with_headers(delivery=delivery_id)
            assert client.deliver(sample).accepted
    hooks.close()
    done = cli("ledger", "show", "abcdef12", "--store", url)
    assert done.returncode == 2
    assert "matches 2 records" in done.stderr
    assert ids[0] in done.stderr and ids[1] in done.stderr
    exact = cli("ledger", "show", ids[1], "--store", url, "--json")
    assert json.loads(exact.stdout)["delivery_id"] == ids[1]


def test_show_refuses_a_prefix_shorter_than_eight(cli: Run, ledger: tuple[str, str, str]) -> None:
    url, _, failed_key = ledger
    done = cli("ledger", "show", failed_key[:5], "--store", url)
    assert done.returncode == 2 and "at least 8" in done.stderr


def test_prune_keeps_failed_records_and_counts_in_a_dry_run(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url, _done_key, failed_key = ledger
    kept = json.loads(cli("ledger", "prune", "--store", url, "--json").stdout)
    assert kept == {"removed": 0, "failed_removed": 0}  # nothing is 30 days old
    dry = cli("ledger", "prune", "--store", url, "--older-than", "0s", "--dry-run", "--json")
    assert dry.returncode == 0
    assert json.loads(dry.stdout) == {
        "dry_run": True,
        "would_remove": {"done": 1, "failed": 0},
        "failed_kept": 1,
    }
    dry_all = cli(
        "ledger", "prune", "--store", url, "--older-than", "0s", "--dry-run", "--include-failed"
    )
    assert "would remove 1 done and 1 failed/dead" in dry_all.stdout
    # A plain prune takes only the done record: the failed one stays for replay.
    pruned = cli("ledger", "prune", "--store", url, "--older-than", "0s", "--json")
    assert json.loads(pruned.stdout) == {"removed": 1, "failed_removed": 0}
    store = open_store(url)
    assert {r.key for r in store.records()} == {failed_key}
    store.close()


def test_prune_include_failed_with_yes_names_and_deletes_them(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url = ledger[0]
    done = cli(
        "ledger",
        "prune",
        "--store",
        url,
        "--older-than",
        "0s",
        "--include-failed",
        "--yes",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"removed": 2, "failed_removed": 1}
    assert "will delete failed" in done.stderr  # each one that goes is named first
    assert json.loads(cli("ledger", "list", "--store", url, "--json").stdout) == []


def test_prune_include_failed_without_yes_asks_and_a_pipe_cannot_answer(
    cli: Run, ledger: tuple[str, str, str]
) -> None:
    url = ledger[0]
    done = cli("ledger", "prune", "--store", url, "--older-than", "0s", "--include-failed")
    assert done.returncode == 2 and "pass --yes" in done.stderr


@pytest.mark.parametrize("age", ["1x", "d30", "-5s"])
def test_prune_refuses_a_duration_it_cannot_read(
    cli: Run, ledger: tuple[str, str, str], age: str
) -> None:
    done = cli("ledger", "prune", "--store", ledger[0], "--older-than", age)
    assert done.returncode == 2 and "not a duration" in done.stderr
