from __future__ import annotations

import re

from .conftest import Run


def test_demo_script_shows_every_behaviour_then_exits(cli: Run) -> None:
    done = cli("demo", "--exit", "--port", "0", env={"GPTIMG_WEBHOOK_SECRET": ""})
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "gallery example running on http://127.0.0.1:" in out
    for line in [
        "✓ accepted: verified, recorded, handler ran once",
        "new generation.succeeded → 200 processed",
        "✓ duplicate deduplicated: handler not run again",
        "same delivery again (same id) → 200 duplicate",
        "✓ forged-id replay caught",
        "same signed body, forged fresh id → 200 duplicate",
        "✓ bad signature rejected",
        "→ 401 invalid_signature",
        "✓ failing handler retried",
        "✓ each generation recorded exactly once",
    ]:
        assert line in out
    # The provider's timeline: the 30 s wait plus the real latency of the first attempt.
    assert re.search(r"500 handler_failed \(t=0s\) → 200 processed \(t=3[0-3]s\)", out), out
    assert "✗" not in out
