"""Replay failed or dead deliveries now, in this process: the one replay everyone calls.

::

    from gptimg_webhooks.replay import replay_now

    for outcome in replay_now(hooks, keys):
        print(outcome.key, outcome.status, outcome.error)

Each key is tried on its own, whatever happened to the ones before: a handler that
fails again is one outcome among the others, never an exception. Only the records
named run; nothing else that happens to be pending is touched.

A failed or dead record is leased by key (one more attempt) and its handlers run
through :meth:`Webhooks.rerun <gptimg_webhooks.Webhooks.rerun>`, the receiver's own
code, settling like a worker run with no retry left: a run that fails again leaves the
record ``dead`` with its new error (only another replay revives it).

The command line (``gptimg-webhooks ledger replay --app``), the Django admin action and
``manage.py gptimg_webhooks_replay`` all call :func:`replay_now`; it imports neither
click nor a framework.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._core.errors import StoreUnavailable
from ._core.ledger import State
from ._core.receiver import Webhooks

__all__ = ["ReplayOutcome", "replay_now"]

#: Statuses that mean the handlers ran to completion now.
_OK = ("processed", "ignored")


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What replaying one record came to.

    ``status`` is ``processed`` or ``ignored`` (done now; ``ok`` is True), ``dead``
    (the handlers failed again; ``error`` holds the new error), ``not_found``,
    ``not_replayable`` (not failed or dead: ``state`` says what it is),
    ``in_progress`` (another process holds it), ``lease_lost``, ``store_unavailable``
    or ``internal_error``.
    """

    key: str
    status: str
    ok: bool
    #: The record's state after the replay (None when there is no record).
    state: str | None = None
    #: The run's attempt number, when the handlers ran.
    attempt: int | None = None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        """Return the outcome as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _one(hooks: Webhooks, key: str) -> ReplayOutcome:
    store = hooks.store
    rec = store.get(key)
    if rec is None:
        return ReplayOutcome(key, "not_found", False)
    if rec.state not in (State.FAILED, State.DEAD):
        return ReplayOutcome(key, "not_replayable", False, rec.state.value, error=rec.error)
    status = hooks.rerun(key)
    after = store.get(key)
    if status == "not_replayable" and after is not None and after.state is State.PROCESSING:
        status = "in_progress"  # another process took it between the look and the lease
    return ReplayOutcome(
        key,
        status,
        status in _OK,
        after.state.value if after is not None else None,
        after.attempts if after is not None else None,
        after.error if after is not None and status not in _OK else None,
    )


def replay_now(hooks: Webhooks, keys: Iterable[str]) -> list[ReplayOutcome]:
    """Run the handlers of the failed or dead records ``keys`` now; one outcome per key.

    Every key is tried, in order, whatever happens to the others; nothing raises for a
    handler that fails again or a key that is not there. Keys are full ledger keys.
    """
    outcomes: list[ReplayOutcome] = []
    for key in dict.fromkeys(keys):  # each key once, in the order given
        try:
            outcomes.append(_one(hooks, key))
        except StoreUnavailable as exc:
            outcomes.append(ReplayOutcome(key, "store_unavailable", False, error=str(exc)))
    return outcomes
