"""The coverage-guided fuzz target, bounded for CI, and its regressions replayed.

By hand, for longer: ``python fuzz/fuzz_verify_request.py fuzz/corpus/verify_request
-max_total_time=600``. Where atheris cannot be installed (it needs a CPython it has
wheels for), hypothesis drives the same target for the same time budget instead.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fuzz.fuzz_verify_request import check
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import ROOT

TARGET = ROOT / "fuzz" / "fuzz_verify_request.py"
CORPUS = ROOT / "fuzz" / "corpus" / "verify_request"
REGRESSIONS = ROOT / "fuzz" / "regressions"
SECONDS = 20


def test_the_seed_corpus_passes_the_target() -> None:
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 24
    for seed in seeds:
        check(seed.read_bytes())


def test_every_recorded_crash_stays_fixed() -> None:
    for found in sorted(REGRESSIONS.iterdir()):
        if found.suffix != ".md":
            check(found.read_bytes())


@pytest.mark.slow
def test_fuzzing_the_sans_io_entry_point_finds_no_crash(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        _fuzz_with_hypothesis()
    else:
        _fuzz_with_atheris(tmp_path)


def _fuzz_with_atheris(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    done = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            str(corpus),
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS * 6,
    )
    tail = done.stderr[-3000:]
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash", "oom")))
    assert done.returncode == 0 and not crashes, f"{crashes}\n{tail}"
    assert "DONE" in done.stderr, tail


def _fuzz_with_hypothesis() -> None:
    seeds = [p.read_bytes() for p in sorted(CORPUS.iterdir())]
    deadline = time.monotonic() + SECONDS

    @settings(
        max_examples=10_000, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(data=st.sampled_from(seeds) | st.binary(max_size=2048), cut=st.binary(max_size=8))
    def run(data: bytes, cut: bytes) -> None:
        if time.monotonic() < deadline:  # the budget: later examples pass at once
            check(data[: len(data) // 2] + cut + data[len(data) // 2 :])

    run()
