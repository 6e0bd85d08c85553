"""Workers for deferred mode: lease pending records, run their handlers, settle them.

In deferred mode (``Webhooks(mode="deferred")``) the receiver answers 202 once a
delivery is recorded; a worker runs the handlers later, holding a lease::

    worker = Worker(hooks, concurrency=4)
    app = Starlette(routes=..., lifespan=worker.lifespan)    # in-process, ASGI
    worker.start_thread()                                    # in-process, WSGI
    # or standalone, as many as you like, on any host that reaches the store:
    #   gptimg-webhooks worker --app myapp.hooks:hooks

The run and the settling are the receiver's own code (:meth:`Webhooks.arun_record`), so a
transactional store commits the handlers' writes with the done mark exactly as in
inline mode. A failed run is retried after an exponential :class:`Backoff`; once out of
attempts the record is kept as dead until someone replays it (``Webhooks.replay(key)``,
or the CLI).

Leases are renewed in the background while handlers run, so a slow handler is never
run twice while its worker lives. A worker that dies mid-handler loses its records when
their leases run out (``lease``, default the receiver's 120 s), and another worker takes
them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ._core.errors import ConfigurationError, StoreUnavailable
from ._core.ledger import Claim, Record
from ._core.receiver import Webhooks
from ._core.runner import Backoff

__all__ = ["Backoff", "Outcome", "Worker"]

logger = logging.getLogger("gptimg_webhooks.worker")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one run of a leased record came to."""

    key: str
    attempt: int
    #: ``processed``, ``ignored``, ``handler_failed`` (retry scheduled), ``dead``,
    #: ``lease_lost`` or ``store_unavailable``.
    status: str


class Worker:
    """Process a receiver's pending records with up to ``concurrency`` handlers at once.

    ``lease`` (seconds, default the receiver's) bounds how long one run may take before
    another worker may take the record over. ``max_attempts`` counts every run, the
    first included; ``backoff`` sets the delays between them. ``poll_interval`` is how
    long an idle worker waits before it looks for due records again.
    """

    def __init__(
        self,
        receiver: Webhooks,
        *,
        concurrency: int = 4,
        lease: float | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if poll_interval <= 0:
            raise ConfigurationError("poll_interval must be positive")
        self.receiver = receiver
        self.concurrency = concurrency
        self.lease = float(lease if lease is not None else receiver.lease)
        if self.lease <= 0:
            raise ConfigurationError("lease must be positive")
        backoff = backoff or Backoff()
        if max_attempts is not None:
            try:
                backoff = Backoff(max_attempts, backoff.initial, backoff.factor, backoff.cap)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from exc
        self.backoff = backoff
        self.poll_interval = poll_interval
        #: Called with each :class:`Outcome` (metrics, tests); must not block.
        self.on_outcome: Callable[[Outcome], None] | None = None
        self._stopping = threading.Event()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"Worker({self.receiver!r}, concurrency={self.concurrency}, lease={self.lease}, "
            f"max_attempts={self.backoff.max_attempts})"
        )

    # Running ------------------------------------------------------------------------

    async def run(self, *, once: bool = False) -> int:
        """Process records until :meth:`stop` (or, with ``once``, until none is due).

        On stop, no new record is leased and the runs under way finish. Return how many
        runs were made.
        """
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        running: set[asyncio.Task[Outcome]] = set()
        runs = 0
        failures = 0
        try:
            while not self._stopping.is_set():
                free = self.concurrency - len(running)
                batch: Sequence[tuple[Record, Claim]] = ()
                if free:
                    try:
                        batch = await self._lease(free)
                        failures = 0
                    except StoreUnavailable as exc:
                        if once:
                            raise
                        failures += 1
                        logger.error("worker cannot reach the ledger: %s", exc)
                for record, claim in batch:
                    running.add(asyncio.create_task(self.process(record, claim)))
                    runs += 1
                if once and not batch and not running:
                    break
                if batch and len(batch) == free:
                    continue  # more may be due: lease again at once
                # Idle (or full): wait for a free slot, a stop, or the next poll.
                delay = self.poll_interval * min(2**failures, 30)
                await self._wait(running, delay)
                running = {t for t in running if not t.done()}
        finally:
            if running:
                logger.info("worker stopping: waiting for %d run(s) to finish", len(running))
                await asyncio.gather(*running, return_exceptions=True)
            self._loop = None
        return runs

    async def _wait(self, running: set[asyncio.Task[Outcome]], timeout: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        if self._stopping.is_set():
            return
        waker = asyncio.create_task(self._wake.wait())
        try:
            await asyncio.wait({waker, *running}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            waker.cancel()

    async def _lease(self, limit: int) -> Sequence[tuple[Record, Claim]]:
        store = self.receiver.store
        try:
            return await store.alease_due(lease=self.lease, limit=limit)
        except (StoreUnavailable, NotImplementedError):
            raise
        except Exception as exc:  # a store bug: treat it as an outage, keep the loop alive
            logger.exception("ledger store raised while leasing")
            raise StoreUnavailable(str(exc)) from exc

    async def process(self, record: Record, claim: Claim) -> Outcome:
        """Run the handlers of one leased record and settle it; the lease is renewed meanwhile."""
        try:
            status = await self.receiver.arun_record(record, claim, backoff=self.backoff)
        except Exception:  # a bug of ours; the lease runs out and another run follows
            logger.exception("worker run of %s raised", record.key[:12])
            status = "internal_error"
        outcome = Outcome(record.key, claim.attempt, status)
        log = logger.info if status in ("processed", "ignored") else logger.warning
        log(
            "record %s attempt %d: %s",
            record.key[:12],
            claim.attempt,
            status,
            extra={"key_prefix": record.key[:12], "attempt": claim.attempt, "outcome": status},
        )
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception:
                logger.exception("on_outcome callback raised")
        return outcome

    def stop(self) -> None:
        """Ask the worker to stop leasing and return once its runs finish; thread-safe."""
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(wake.set)

    # In-process helpers -------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[Worker]:
        """Run the worker beside an ASGI app: ``Starlette(lifespan=worker.lifespan)``."""
        self._stopping.clear()
        task = asyncio.create_task(self.run(), name="gptimg-webhooks-worker")
        try:
            yield self
        finally:
            self.stop()
            await task

    def start_thread(self) -> threading.Thread:
        """Run the worker in a daemon thread (WSGI apps); :meth:`stop` ends it."""
        self._stopping.clear()
        thread = threading.Thread(
            target=lambda: asyncio.run(self.run()), name="gptimg-webhooks-worker", daemon=True
        )
        thread.start()
        return thread
