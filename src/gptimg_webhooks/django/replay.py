"""Replay failed deliveries locally: run their handlers again, now, through the receiver.

The admin action and ``manage.py gptimg_webhooks_replay`` both call :func:`replay`, which
calls :func:`gptimg_webhooks.replay.replay_now`: the one replay path the CLI's
``ledger replay --app`` takes too. Each failed or dead record is leased and run at
once, exactly as a provider retry would run it (same handlers, same transaction, one more
attempt); a run that fails again leaves the record ``dead`` with the new error.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..replay import replay_now
from .conf import receiver

__all__ = ["replay"]


def replay(keys: Iterable[str]) -> dict[str, str]:
    """Replay records by key; return each key's outcome.

    Outcomes: ``processed`` or ``ignored`` (done now), ``dead`` (failed again),
    ``not_replayable`` (not failed or dead), ``lease_lost`` or ``store_unavailable``.
    """
    return {outcome.key: outcome.status for outcome in replay_now(receiver(), keys)}
