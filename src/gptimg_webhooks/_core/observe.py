"""Observers: what the receiver tells metrics, tracing and logs, as plain data.

The receiver calls its observers (``Webhooks(observers=[...])``) at three points:
:meth:`Observer.answered` once per answer (rejections included), :meth:`Observer.receiving`
around the recording and run of a verified delivery, and :meth:`Observer.running` around
one run of a record's handlers (inline, a worker's, a task queue's or a replay). The
data is plain (:class:`Answer`, :class:`Receipt`, :class:`Run`), so an observer needs
nothing from the core; ``gptimg_webhooks.metrics`` and ``gptimg_webhooks.tracing`` are
two. An observer that raises is logged and skipped: it never changes an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

__all__ = ["Answer", "Observer", "Observers", "Receipt", "Run"]

logger = logging.getLogger("gptimg_webhooks")


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer the receiver gave.

    ``outcome`` is the answer's word (``processed``, ``duplicate``, ``queued``,
    ``invalid_signature``, ...); ``cause`` says why a signature failed (``missing``,
    ``repeated`` or ``mismatch``), else ''. ``latency`` is seconds from the request's
    arrival at the receiver to its answer.
    """

    status: int
    outcome: str
    event: str | None
    delivery_id: str
    latency: float
    cause: str = ""


@dataclass(slots=True)
class Receipt:
    """A verified delivery being recorded (and, inline, run).

    An observer may set ``traceparent`` on entry (W3C trace context of its span): the
    ledger keeps it with the record so a runner's span can link to it. The receiver sets
    ``outcome`` and ``status`` before the block exits.
    """

    delivery_id: str
    event: str
    key: str
    mode: str
    traceparent: str | None = None
    outcome: str = ""
    status: int = 0


@dataclass(slots=True)
class Run:
    """One run of a record's handlers; ``outcome`` and ``duration`` are set before exit.

    ``runner`` is ``inline`` (the request's own run) or ``deferred`` (a worker, a task
    queue, the recovery sweep or a replay). ``traceparent`` is the receiving span's, when
    the ledger kept it.
    """

    key: str
    delivery_id: str
    event: str
    attempt: int
    runner: str
    traceparent: str | None = None
    outcome: str = ""
    duration: float = 0.0


class Observer:
    """Base class with no-op hooks; override the ones you need. Hooks must not block long."""

    def answered(self, answer: Answer) -> None:
        """See one answer."""

    def receiving(self, receipt: Receipt) -> AbstractContextManager[Any]:
        """Wrap the recording (and inline run) of a verified delivery."""
        return nullcontext()

    def running(self, run: Run) -> AbstractContextManager[Any]:
        """Wrap one run of a record's handlers."""
        return nullcontext()


class Observers:
    """Fan calls out to several observers; one that raises is logged and skipped."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Observer] = ()) -> None:
        self.items = tuple(items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, observer: Observer) -> None:
        """Add an observer (at start-up, before requests arrive)."""
        self.items = (*self.items, observer)

    def answered(self, answer: Answer) -> None:
        for observer in self.items:
            try:
                observer.answered(answer)
            except Exception:
                logger.exception("observer %r raised", observer)

    def receiving(self, receipt: Receipt) -> AbstractContextManager[Any]:
        return self._wrap("receiving", receipt)

    def running(self, run: Run) -> AbstractContextManager[Any]:
        return self._wrap("running", run)

    @contextmanager
    def _wrap(self, hook: str, data: Any) -> Iterator[None]:
        with ExitStack() as stack:
            for observer in self.items:
                try:
                    stack.enter_context(_Safe(getattr(observer, hook)(data), observer))
                except Exception:
                    logger.exception("observer %r raised", observer)
            yield


class _Safe(AbstractContextManager[Any]):
    """An observer's context manager whose exit never raises nor swallows."""

    __slots__ = ("cm", "observer")

    def __init__(self, cm: AbstractContextManager[Any], observer: Observer) -> None:
        self.cm, self.observer = cm, observer

    def __enter__(self) -> Any:
        return self.cm.__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            self.cm.__exit__(*exc)
        except Exception:
            logger.exception("observer %r raised", self.observer)
