"""Replay failed deliveries locally: run their handlers again, now, through the receiver.

With the ORM ledger each failed or dead record is leased and run at once, in this
process, exactly as a provider retry would run it (same handlers, same transaction, one
more attempt); a run that fails again leaves the record ``dead`` with the new error, so
only another replay revives it. Other stores only put the records back to pending, for
a deferred-mode worker (``gptimg-webhooks worker``) to run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from ..worker import Worker
from .conf import receiver
from .store import DjangoStore

__all__ = ["replay"]


def replay(keys: Iterable[str]) -> dict[str, str]:
    """Replay records by key; return each key's outcome.

    Outcomes: ``processed`` or ``ignored`` (done now), ``dead`` (failed again),
    ``queued`` (left for a worker), ``not_replayable`` (not failed or dead), or the
    error code that stopped it.
    """
    hooks = receiver()
    store = hooks.store
    outcomes: dict[str, str] = {}
    if not isinstance(store, DjangoStore):
        for key in keys:
            outcomes[key] = "queued" if hooks.replay(key) else "not_replayable"
        return outcomes
    # One run, no backoff: a failure settles as dead instead of waiting for a worker.
    worker = Worker(hooks, concurrency=1, max_attempts=1)

    async def run_all() -> None:
        for key in keys:
            # The ORM refuses to run on an event loop's thread.
            leased = await asyncio.to_thread(store.rerun, key, lease=hooks.lease)
            if leased is None:
                outcomes[key] = "not_replayable"
            else:
                outcomes[key] = (await worker.process(*leased)).status

    asyncio.run(run_all())
    return outcomes
