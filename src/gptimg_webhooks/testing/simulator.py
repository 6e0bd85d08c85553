"""The provider's delivery policy, played against a URL or an in-process app.

Per the provider's contract: each attempt has a 5 s timeout; any non-2xx answer or
timeout is retried after 30 s, 2 min and 10 min; after 8 consecutive failed attempts
(counted across every delivery to the endpoint) the endpoint is disabled, and nothing
more is sent until it is re-enabled by hand.

::

    sim = Simulator("http://127.0.0.1:8000/hooks/gptimg", secret, time_scale=600)
    report = sim.deliver(events.succeeded())
    report.delivered, [a.status for a in report.attempts], report.duration

``time_scale=600`` runs the 12.5 minute schedule in 1.25 s; ``clock=FakeClock()`` skips
the waits entirely. The per-attempt timeout is real time, never scaled: it bounds how
long the receiver really takes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from gptimg_webhooks.testing._transport import LoopThread, Transport, transport_for
from gptimg_webhooks.testing.deliveries import SignedDelivery, signed
from gptimg_webhooks.testing.factories import Sample

__all__ = [
    "Attempt",
    "Clock",
    "FakeClock",
    "Policy",
    "Report",
    "SimEvent",
    "Simulator",
]


@dataclass(frozen=True)
class Policy:
    """The provider's delivery policy; the defaults are its documented values."""

    timeout: float = 5.0
    retry_delays: tuple[float, ...] = (30.0, 120.0, 600.0)
    disable_after: int = 8
    #: Answers after which no retry is made (the provider retries every non-2xx; the
    #: ``send`` command stops after a 401, which no retry can fix).
    stop_on: tuple[int, ...] = ()


class Clock:
    """Simulated time: real time multiplied by ``scale`` (1 = real time)."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("time scale must be positive")
        self.scale = scale
        self._start = time.monotonic()

    def now(self) -> float:
        """Return simulated seconds since the clock was made."""
        return (time.monotonic() - self._start) * self.scale

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of simulated time."""
        await asyncio.sleep(max(seconds, 0.0) / self.scale)


class FakeClock(Clock):
    """Time that only moves when someone sleeps: a whole schedule runs at once."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        self._now = max(self._now, self._now + seconds)
        await asyncio.sleep(0)


@dataclass(frozen=True)
class Attempt:
    """One POST of one delivery."""

    number: int
    delivery_id: str | None
    #: Seconds since the delivery's first attempt, on its simulated timeline: the
    #: retry waits (30, 120, 600) plus the receiver's real answer times.
    at: float
    #: Wall-clock time it was sent.
    sent_at: datetime
    #: Real seconds the receiver took to answer (or to time out).
    latency: float
    status: int | None
    #: The receiver's word: ``processed``, ``duplicate``, ``invalid_signature``, ...
    answer: str | None = None
    #: Why there was no answer: ``timeout after 5s``, ``connection refused``, ...
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        """Return a one-line summary (``200 processed``, ``timeout after 5s``)."""
        if self.status is None:
            return self.error or "no answer"
        return f"{self.status} {self.answer or ''}".strip()


@dataclass
class Report:
    """Every attempt of one delivery and how it ended."""

    delivery: SignedDelivery
    attempts: list[Attempt] = field(default_factory=list)
    #: ``delivered``, ``failed`` (out of retries) or ``disabled`` (endpoint auto-disabled).
    outcome: Literal["delivered", "failed", "disabled", "pending"] = "pending"

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"

    @property
    def duration(self) -> float:
        """Return simulated seconds from the first attempt to the last."""
        return self.attempts[-1].at if self.attempts else 0.0

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass(frozen=True)
class SimEvent:
    """What a simulator tells its observer: ``sending``, ``answered``, ``waiting``, ``done``."""

    kind: Literal["sending", "answered", "waiting", "done"]
    report: Report
    number: int
    attempt: Attempt | None = None
    #: Clock time (:meth:`Clock.now`) of the next attempt, while ``waiting``.
    until: float | None = None


Observer = Callable[[SimEvent], None]


class Simulator:
    """Deliver like the provider: timeouts, retries, auto-disable; report every attempt.

    ``target`` is an endpoint URL, an ASGI app, a WSGI app (``path`` says where to
    post) or a :class:`Transport`. ``secret`` signs samples and raw bodies; already
    signed deliveries are sent as they are.
    """

    def __init__(
        self,
        target: Any,
        secret: str | None = None,
        *,
        path: str = "/hooks/gptimg",
        policy: Policy | None = None,
        time_scale: float = 1.0,
        clock: Clock | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.transport: Transport = transport_for(target, path)
        self.secret = secret
        self.path = path
        self.policy = policy or Policy()
        self.clock = clock or Clock(time_scale)
        self.observer = observer
        #: Failed attempts in a row, across deliveries (the provider counts per endpoint).
        self.consecutive_failures = 0
        self.disabled = False
        self._loop: LoopThread | None = None

    def enable(self) -> None:
        """Re-enable the endpoint, as someone would in the provider's dashboard."""
        self.disabled = False
        self.consecutive_failures = 0

    def sign(self, event: Sample[Any] | SignedDelivery | bytes | str) -> SignedDelivery:
        """Return ``event`` as a signed delivery (unchanged when it already is one)."""
        if isinstance(event, SignedDelivery):
            return event
        if self.secret is None:
            raise ValueError("the simulator needs a secret to sign samples")
        return signed(event, self.secret)

    def _tell(self, event: SimEvent) -> None:
        if self.observer is not None:
            self.observer(event)

    async def adeliver(self, event: Sample[Any] | SignedDelivery | bytes | str) -> Report:
        """Deliver one event with the whole retry schedule; return its report."""
        report = Report(self.sign(event))
        # The delivery's own timeline, as the provider lives it: the waits in simulated
        # seconds, the receiver's answers in real ones (they are not compressed).
        elapsed = 0.0
        schedule = (0.0, *self.policy.retry_delays)
        for number, delay in enumerate(schedule, start=1):
            if delay:
                until = self.clock.now() + delay
                self._tell(SimEvent("waiting", report, number, until=until))
                await self.clock.sleep(delay)
                elapsed += delay
            if self.disabled:
                report.outcome = "disabled"
                break
            self._tell(SimEvent("sending", report, number))
            attempt = await self._attempt(report.delivery, number, elapsed)
            elapsed += attempt.latency
            report.attempts.append(attempt)
            self._count(attempt)
            self._tell(SimEvent("answered", report, number, attempt))
            if attempt.ok:
                report.outcome = "delivered"
                break
            if self.disabled:
                report.outcome = "disabled"
                break
            if attempt.status in self.policy.stop_on:
                report.outcome = "failed"
                break
        else:
            report.outcome = "failed"
        self._tell(SimEvent("done", report, len(report.attempts)))
        return report

    def _count(self, attempt: Attempt) -> None:
        if attempt.ok:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.policy.disable_after:
            self.disabled = True

    async def _attempt(self, delivery: SignedDelivery, number: int, at: float) -> Attempt:
        sent_at = datetime.now(timezone.utc)
        began = time.perf_counter()
        status: int | None = None
        answer: str | None = None
        error: str | None = None
        timeout = self.policy.timeout
        try:
            result = await asyncio.wait_for(
                self.transport.arequest(
                    "POST", self.path, delivery.header_list(), delivery.body, timeout
                ),
                timeout,
            )
        except (TimeoutError, asyncio.TimeoutError):
            error = f"timeout after {timeout:g}s"
        except Exception as exc:  # a refused connection or an app that raised: a failure
            error = _describe(exc)
        else:
            status = result.status
            answer = _word(result.body)
        return Attempt(
            number,
            delivery.delivery_id,
            at,
            sent_at,
            time.perf_counter() - began,
            status,
            answer,
            error,
        )

    async def aconcurrent(
        self, deliveries: Sequence[Sample[Any] | SignedDelivery | bytes | str]
    ) -> list[Report]:
        """Deliver several at once, each with its own schedule; reports in the same order."""
        return list(await asyncio.gather(*(self.adeliver(d) for d in deliveries)))

    async def aduplicates(
        self, event: Sample[Any] | SignedDelivery | bytes | str, copies: int = 2, forged: int = 1
    ) -> list[Report]:
        """Send ``copies`` of one delivery (same id) and ``forged`` copies under fresh ids.

        All at once, as a provider retry racing a replay would arrive.
        """
        delivery = self.sign(event)
        batch = [delivery] * copies + [delivery.forged() for _ in range(forged)]
        return await self.aconcurrent(batch)

    # Sync faces: one background loop per simulator, so in-process ASGI apps keep theirs.
    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = LoopThread()
        return self._loop.run(coro)

    def deliver(self, event: Sample[Any] | SignedDelivery | bytes | str) -> Report:
        """Blocking :meth:`adeliver`."""
        report: Report = self._run(self.adeliver(event))
        return report

    def concurrent(
        self, deliveries: Sequence[Sample[Any] | SignedDelivery | bytes | str]
    ) -> list[Report]:
        """Blocking :meth:`aconcurrent`."""
        reports: list[Report] = self._run(self.aconcurrent(deliveries))
        return reports

    def duplicates(
        self, event: Sample[Any] | SignedDelivery | bytes | str, copies: int = 2, forged: int = 1
    ) -> list[Report]:
        """Blocking :meth:`aduplicates`."""
        reports: list[Report] = self._run(self.aduplicates(event, copies, forged))
        return reports

    def close(self) -> None:
        self.transport.close()
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _word(body: bytes) -> str | None:
    import json

    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        word = data.get("status") if data.get("ok") else data.get("error")
        return word if isinstance(word, str) else None
    return None


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc)
    if "ConnectError" in name or "refused" in text.lower():
        return "connection refused"
    return f"{name}: {text}" if text else name
