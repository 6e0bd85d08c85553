"""Short CI variants of ``scripts/load`` and ``scripts/soak`` (the full runs are by hand)."""

from __future__ import annotations

import pytest

from tests.hostile.load import run_load, soak
from tests.support.services import ensure_postgres, ensure_redis

pytestmark = pytest.mark.slow

DELIVERIES = 400
CONCURRENCY = 64


@pytest.mark.parametrize(
    ("server", "store"),
    [
        ("starlette-uvicorn", "sqlite"),
        pytest.param("starlette-uvicorn", "redis", marks=pytest.mark.redis),
        pytest.param("flask-gunicorn", "postgres", marks=pytest.mark.postgres),
    ],
)
def test_load_loses_nothing_runs_nothing_twice_and_answers_no_5xx(server: str, store: str) -> None:
    if store == "redis":
        ensure_redis()
    elif store == "postgres":
        ensure_postgres()
    figures = run_load(server, store, DELIVERIES, CONCURRENCY, workers=4)
    print(figures.line(), *figures.summary(), sep="\n")
    # Every answer that was not 2xx is kept, with the reason the library's answer names.
    not_2xx = sum(n for status, n in figures.statuses.items() if not 200 <= status < 300)
    assert len(figures.answers) == not_2xx
    assert all(a.reason != "-" for a in figures.answers if a.status), figures.summary()
    assert figures.new > DELIVERIES * 0.6
    assert figures.duplicates > 0 and figures.replays > 0
    assert figures.lost == 0
    assert figures.twice == 0
    assert figures.server_errors == 0, figures.summary()
    assert figures.in_progress == 0
    assert figures.gave_up == 0


def test_short_soak_keeps_memory_flat_and_the_ledger_pruned() -> None:
    result = soak(
        "starlette-uvicorn", 36.0, 20.0, retention=6.0, prune_interval=2.0, sample_every=6.0
    )
    print(result.line(warm_after=12.0))
    assert result.load is not None
    assert result.load.server_errors == 0, result.load.statuses
    assert (result.load.lost, result.load.twice, result.load.in_progress) == (0, 0, 0)
    # Pruned while it ran: the ledger holds about retention + prune interval worth of
    # deliveries (rate 20/s x ~8 s = 160 new records), never all of them (~540 new).
    sent = result.load.requests
    peak = max(records for _, _, records in result.samples)
    assert peak < sent * 0.5, (peak, sent)
    assert result.growth(warm_after=12.0) < 16 << 20
