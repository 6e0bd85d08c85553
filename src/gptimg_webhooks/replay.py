"""Replay failed or dead deliveries now, in this process: the one replay everyone calls.

::

    from gptimg_webhooks.replay import replay_now

    for outcome in replay_now(hooks, keys):
        print(outcome.key, outcome.status, outcome.error)

Each key is tried on its own, whatever happened to the ones before: a handler that
fails again is one outcome among the others, never an exception. Only the records
named run; nothing else that happens to be pending is touched.

A failed record is claimed the way a provider retry would claim it (one more attempt)
and its handlers run through the receiver's own code, settling like a worker run with
no retry left: a run that fails again leaves the record ``dead`` with its new error
(only another replay revives it). A dead record is leased again by key where the store
can (``lease_again``); on a store that cannot, it goes back to pending for
``gptimg-webhooks worker`` and its outcome says ``queued``.

The command line (``gptimg-webhooks ledger replay --app``) calls :func:`replay_now`;
it imports neither click nor a framework.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ._core.errors import StoreUnavailable
from ._core.ledger import Claim, ClaimStatus, Entry, Record, State, Store
from ._core.receiver import Webhooks
from .worker import Worker

__all__ = ["ReplayOutcome", "replay_now"]

#: Statuses that mean the handlers ran to completion now.
_OK = ("processed", "ignored")


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What replaying one record came to.

    ``status`` is ``processed`` or ``ignored`` (done now; ``ok`` is True), ``dead``
    (the handlers failed again; ``error`` holds the new error), ``queued`` (back to
    pending for a worker: the store cannot lease one dead record by key),
    ``not_found``, ``not_replayable`` (not failed or dead: ``state`` says what it is),
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


def _lease(store: Store, rec: Record, now: float, lease: float) -> tuple[Record, Claim] | None:
    """Lease one failed or dead record by key; None when this store cannot."""
    lease_again = getattr(store, "lease_again", None)
    if callable(lease_again):  # the store can lease any failed or dead record by key
        found: tuple[Record, Claim] | None = lease_again(rec.key, now=now, lease=lease)
        return found
    if rec.state is not State.FAILED or rec.body is None:
        return None
    # Every store claims a failed record again, as it does for a provider retry.
    entry = Entry(rec.key, rec.delivery_id, rec.event, rec.generation_id, rec.body)
    claim = store.claim(entry, now=now, lease=lease)
    if claim.status is not ClaimStatus.CLAIMED:
        return None
    leased = store.get(rec.key) or rec
    return dataclasses.replace(leased, lease_until=now + lease), claim


def _one(hooks: Webhooks, worker: Worker, key: str) -> ReplayOutcome:
    store = hooks.store
    rec = store.get(key)
    if rec is None:
        return ReplayOutcome(key, "not_found", False)
    if rec.state not in (State.FAILED, State.DEAD):
        return ReplayOutcome(key, "not_replayable", False, rec.state.value, error=rec.error)
    now = hooks.clock()
    leased = _lease(store, rec, now, hooks.lease)
    if leased is None:
        after = store.get(key)
        if after is not None and after.state is State.DEAD and store.replay(key, now=now):
            return ReplayOutcome(key, "queued", False, State.PENDING.value, error=rec.error)
        state = after.state.value if after is not None else None
        status = "in_progress" if state == State.PROCESSING.value else "not_replayable"
        return ReplayOutcome(key, status, False, state, error=rec.error)
    record, claim = leased
    outcome = asyncio.run(worker.process(record, claim))
    after = store.get(key)
    return ReplayOutcome(
        key,
        outcome.status,
        outcome.status in _OK,
        after.state.value if after is not None else None,
        claim.attempt,
        after.error if after is not None and outcome.status not in _OK else None,
    )


def replay_now(hooks: Webhooks, keys: Iterable[str]) -> list[ReplayOutcome]:
    """Run the handlers of the failed or dead records ``keys`` now; one outcome per key.

    Every key is tried, in order, whatever happens to the others; nothing raises for a
    handler that fails again or a key that is not there. Keys are full ledger keys.
    """
    # One run, no backoff: a failure settles as dead instead of waiting for a worker.
    worker = Worker(hooks, concurrency=1, max_attempts=1)
    outcomes: list[ReplayOutcome] = []
    for key in dict.fromkeys(keys):  # each key once, in the order given
        try:
            outcomes.append(_one(hooks, worker, key))
        except StoreUnavailable as exc:
            outcomes.append(ReplayOutcome(key, "store_unavailable", False, error=str(exc)))
    return outcomes
