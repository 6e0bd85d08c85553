"""``gptimg-webhooks reconcile`` through the real console script, against the local provider."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from gptimg_webhooks import Reconciliation, Webhooks
from gptimg_webhooks.cli._server import BackgroundServer
from gptimg_webhooks.client import Client, poller
from gptimg_webhooks.testing import LocalProvider
from tests.cli.conftest import SECRET, Run
from tests.support.servers import free_port

APP = """
from gptimg_webhooks import Reconciliation, Webhooks
from gptimg_webhooks.client import poller

hooks = Webhooks(
    store="sqlite:///{ledger}",
    reconcile=Reconciliation(poller({key!r}, base_url={base!r}), after=3600),
)

@hooks.on("generation.succeeded", "generation.failed")
def record(event):
    with open({runs!r}, "a") as out:
        out.write(event.data.generation_id + "\\n")

plain = Webhooks(store="memory://")
"""


def test_reconcile_polls_every_watched_generation_now_and_runs_each_once(
    cli: Run, tmp_path: Path
) -> None:
    provider = LocalProvider(time_scale=3000, queued_for=0.1, runs_for=0.2)
    key = provider.add_key()
    ledger, runs = tmp_path / "ledger.db", tmp_path / "runs.txt"
    with BackgroundServer(provider, "127.0.0.1", free_port()) as server:
        base = f"{server.url}/api/v1"
        (tmp_path / "app.py").write_text(
            textwrap.dedent(APP).format(ledger=ledger, key=key, base=base, runs=str(runs))
        )
        # The app submitted these; no webhook endpoint is registered, so none is delivered.
        watcher = Webhooks(
            SECRET,
            store=f"sqlite:///{ledger}",
            reconcile=Reconciliation(poller(key, base_url=base), after=3600),
        )
        with Client(key, base_url=base, on_submitted=watcher.watch) as api:
            ids = [api.generate(f"a lighthouse {i}").generation_id for i in range(3)]
            ids.append(api.generate("a storm [fail]").generation_id)
        watcher.close()
        provider.wait_idle(timeout=30)
        done = cli("reconcile", "--app", "app:hooks", "--json")
        assert done.returncode == 0, done.stderr
        outcomes = json.loads(done.stdout)
        assert sorted(o["outcome"] for o in outcomes) == ["processed"] * 4
        again = cli("reconcile", "--app", "app:hooks", "--json")
        assert json.loads(again.stdout) == []  # nothing left pending
    assert sorted(runs.read_text().split()) == sorted(ids)


def test_reconcile_without_reconciliation_is_a_usage_error(cli: Run, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        textwrap.dedent(APP).format(
            ledger=tmp_path / "l.db", key="gimg_x", base="http://x", runs="r"
        )
    )
    done = cli("reconcile", "--app", "app:plain")
    assert done.returncode == 2
    assert "reconcile=Reconciliation" in done.stderr
    assert "Traceback" not in done.stderr
