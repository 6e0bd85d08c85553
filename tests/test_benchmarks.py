from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptimg_webhooks._core.handoff import cpu_finder

ROOT = Path(__file__).resolve().parents[1]


def _quick(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a benchmark command at a fiftieth of its batch sizes."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "BENCH_SCALE": "0.02"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_the_benchmark_command_runs_quickly_and_writes_its_outputs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra draws the plots")
    out, docs = tmp_path / "results.json", tmp_path / "docs"
    done = _quick(
        "-m",
        "benchmarks",
        "--quick",
        "--only",
        "micro,ledgers",
        "--out",
        str(out),
        "--docs",
        str(docs),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    headline = results["micro"]["headline"]
    assert "hand-written" in headline
    assert all(entry["us"]["median"] > 0 for entry in headline.values())
    assert results["ledgers"]["by_size"]["memory"]["growth"] > 0
    assert any(row["target"].startswith("in process") for row in results["targets"])
    page = (docs / "benchmarks.md").read_text()
    assert "## Targets" in page
    assert "## One delivery in process" in page
    assert "## The ASGI app in process" in page
    assert all(entry["us"]["median"] > 0 for entry in results["micro"]["asgi"].values())
    if cpu_finder() is not None:  # the hop section needs threads that can follow a CPU
        assert "## The reply deadline's thread hop" in page
        assert all(entry["us"]["median"] > 0 for entry in results["micro"]["hop"].values())
    for name in ("in_process.png", "body_size.png", "ledger_size.png"):
        assert (docs / "benchmarks" / name).stat().st_size > 1000
    # Comparing a run with itself flags nothing.
    again = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json,sys; from benchmarks.report import compare; "
            f"r=json.load(open({str(out)!r})); print(len(compare(r, r)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert again.stdout.strip() == "0"


@pytest.mark.slow
def test_hot_path_script_finds_the_standard_librarys_http_and_every_peer() -> None:
    # Run as a script, benchmarks/ comes first on the path, where http.py once shadowed
    # the standard library's http: the peers looked uninstalled and Starlette failed.
    done = _quick("benchmarks/hot_path.py", "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped" not in done.stdout, done.stdout
    assert "svix Webhook.verify" in done.stdout
    assert "library ASGI app" in done.stdout


def test_hot_path_against_an_earlier_commit_reports_each_tree_in_one_run() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/hot_path.py",
            "--against",
            "HEAD",
            "--rounds",
            "1",
            "--n",
            "200",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    medians = [line.split() for line in lines if line.startswith("  ")]
    names = [" ".join(row[:-2]) for row in medians]
    assert names == ["HEAD default", "this tree default", "this tree inline"]
    assert all(float(row[-2].rstrip("x")) > 0 for row in medians)
    assert sum(line.startswith("this tree (") for line in lines) == 2
