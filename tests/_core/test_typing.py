"""mypy sees which model a handler gets (the ``on`` overloads)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SNIPPET = textwrap.dedent(
    """
    from __future__ import annotations
    from gptimg_webhooks import Delivery, Event, GenerationFailed, GenerationSucceeded, Webhooks

    hooks = Webhooks("whsec_x", store="memory://")

    @hooks.on("generation.succeeded")
    def good(event: GenerationSucceeded, delivery: Delivery) -> None: ...

    @hooks.on("generation.failed")
    async def good_async(event: GenerationFailed) -> None: ...

    @hooks.on("generation.succeeded", "generation.failed")
    def many(event: Event) -> None: ...

    @hooks.on("generation.succeeded")
    def wrong(event: GenerationFailed) -> None: ...  # the one error
    """
)


def test_mypy_rejects_a_handler_typed_for_the_wrong_event(tmp_path: Path) -> None:
    source = tmp_path / "handlers.py"
    source.write_text(SNIPPET)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            "/dev/null",
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    wrong_line = next(i for i, line in enumerate(SNIPPET.splitlines(), 1) if "def wrong" in line)
    assert len(errors) == 1, result.stdout
    assert f"handlers.py:{wrong_line - 1}:" in errors[0]  # reported at the decorator
    assert "GenerationFailed" in errors[0]
