"""Hand a blocking run to another thread and wait for it with a timeout, cheaply.

The sync request path needs this once per delivery when a reply deadline is set: the
run goes on in a runner thread while the request thread waits at most until the
deadline. ``concurrent.futures`` pays for generality there (a Condition per future,
a Python-level semaphore, two locks per submit); this keeps to C-level primitives: a
``queue.SimpleQueue`` feeding long-lived threads and one lock per request.
"""

from __future__ import annotations

import concurrent.futures
import threading
import weakref
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Generic, TypeVar

__all__ = ["Pending", "Runners"]

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of one handed-off call; its lock is held until the call ends."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._value: T | None = None
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> T:
        """Wait for the call; raise ``concurrent.futures.TimeoutError`` past ``timeout``."""
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise concurrent.futures.TimeoutError
        self._done.release()  # so a later result() returns at once
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def _run(self, func: Callable[..., T], args: tuple[Any, ...]) -> None:
        try:
            self._value = func(*args)
        except BaseException as exc:  # handed back to the waiter, as a future would
            self._error = exc
        finally:
            self._done.release()


_Item = tuple[Pending[Any], Callable[..., Any], tuple[Any, ...]] | None

#: Every runner thread and its queue, for the exit hook (as concurrent.futures keeps).
_live: weakref.WeakKeyDictionary[threading.Thread, SimpleQueue[_Item]] = weakref.WeakKeyDictionary()


class Runners:
    """Up to ``max_threads`` long-lived threads running handed-off calls in order.

    The threads stop when :meth:`close` is called, when the object is collected, and at
    interpreter exit, after the calls already handed over have run.
    """

    def __init__(self, max_threads: int = 64, name: str = "gptimg-webhooks-run") -> None:
        self.max_threads = max_threads
        self.name = name
        self._queue: SimpleQueue[_Item] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for an item nobody has reserved them for
        self._closed = False
        queue, threads = self._queue, self._threads
        # Collected without close(): tell its threads to stop (they hold only a weak ref).
        self._ref = weakref.ref(self, lambda _: _stop(queue, len(threads)))

    def submit(self, func: Callable[..., T], *args: Any) -> Pending[T]:
        """Run ``func(*args)`` in a runner thread; return its :class:`Pending` result."""
        pending: Pending[T] = Pending()
        with self._lock:
            if self._closed:
                raise RuntimeError("runners closed")
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(
                    target=_serve, args=(self._queue, self._ref), name=self.name
                )
                self._threads.append(thread)
                _live[thread] = self._queue
                thread.start()
        self._queue.put((pending, func, args))
        return pending

    def _finished(self) -> None:
        with self._lock:
            self._idle += 1

    def close(self, wait: bool = False) -> None:
        """Stop the threads once the calls already handed over have run."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        _stop(self._queue, len(threads))
        if wait:
            for thread in threads:
                thread.join()


def _stop(queue: SimpleQueue[_Item], count: int) -> None:
    for _ in range(count):
        queue.put(None)


def _serve(queue: SimpleQueue[_Item], ref: weakref.ref[Runners]) -> None:
    while True:
        item = queue.get()
        if item is None:
            return
        pending, func, args = item
        pending._run(func, args)
        del item, pending, func, args  # let the result go with its waiter
        runners = ref()
        if runners is None:
            return
        runners._finished()
        del runners


def _at_exit() -> None:
    """Stop every runner thread; the interpreter then joins them (they are not daemons)."""
    for thread, queue in list(_live.items()):
        if thread.is_alive():
            queue.put(None)


# threading's own hook runs before the interpreter joins non-daemon threads (the one
# concurrent.futures uses); plain atexit would run after that join, too late.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every CPython from 3.9 has it
    import atexit

    atexit.register(_at_exit)
