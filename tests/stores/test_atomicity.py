"""The conformance suite's race tests catch a claim that checks, then inserts.

Each naive store below looks the key up first and writes afterwards, with a short pause
standing for the network round trip between the two. Run through the very tests every
real store passes, it must fail them: proof that those tests can see a non-atomic claim.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gptimg_webhooks._core.ledger import Applied, Change, Store
from gptimg_webhooks.stores.memory import MemoryStore, _Row, new_token
from gptimg_webhooks.stores.sqlite import SQLiteStore
from tests.stores.conformance import MultiProcessConformance, StoreConformance

ROUND_TRIP = 0.002
TWO_CLAIMS = r"CLAIMED.*CLAIMED"


class CheckThenInsertMemory(MemoryStore):
    # A thread per async call, as the base class does by default: the races are real.
    aapply = Store.aapply

    def apply(self, change: Change) -> Applied:
        transition, key, entry = change.transition, change.key, change.entry
        if not transition.inserts or entry is None or self.get(key) is not None:
            return super().apply(change)
        time.sleep(ROUND_TRIP)
        with self._lock:
            now = self.clock()
            row = self._rows[key] = _Row(entry, now)  # overwrites a racer's row
            row.state, row.attempts, row.token = transition.target, 1, new_token()
            row.lease_until = now + change.lease
            return Applied(True, row.state, row.attempts, row.token)


class CheckThenInsertSQLite(SQLiteStore):
    def apply(self, change: Change) -> Applied:
        transition, key, entry = change.transition, change.key, change.entry
        with self._db() as conn:
            found = conn.execute(
                "SELECT 1 FROM gptimg_webhook_deliveries WHERE key = ?", (key,)
            ).fetchone()
        if not transition.inserts or entry is None or found is not None:
            return super().apply(change)
        time.sleep(ROUND_TRIP)
        token, now = new_token(), time.time()
        with self._db() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO gptimg_webhook_deliveries (key, state, delivery_id, "
                "attempts, token, lease_until, body, created_at, updated_at) "
                "VALUES (?, 'processing', ?, 1, ?, ?, ?, ?, ?)",
                (key, entry.delivery_id, token, now + change.lease, entry.body, now, now),
            )
        return Applied(True, transition.target, 1, token)


def test_thread_race_test_catches_check_then_insert() -> None:
    naive = CheckThenInsertMemory()
    with pytest.raises(AssertionError, match=TWO_CLAIMS):
        StoreConformance().test_racing_claimers_in_threads_get_exactly_one_claim(
            naive, lambda: naive
        )


@pytest.mark.slow
def test_process_race_test_catches_check_then_insert(tmp_path: Path) -> None:
    path = str(tmp_path / "naive.sqlite3")
    with pytest.raises(AssertionError, match=TWO_CLAIMS):
        MultiProcessConformance().test_racing_claimers_in_processes_get_exactly_one_claim(
            CheckThenInsertSQLite(path), lambda: CheckThenInsertSQLite(path)
        )


def test_async_race_test_catches_check_then_insert() -> None:
    naive = CheckThenInsertMemory()
    with pytest.raises(AssertionError, match=TWO_CLAIMS):
        StoreConformance().test_async_claims_race_to_exactly_one_claim(naive)
