"""Hand a blocking run to another thread and wait for it with a timeout, cheaply.

The sync request path needs this once per run of handlers when a reply deadline is
set: the run goes on in a runner thread while the request thread waits at most until
the deadline. ``concurrent.futures`` pays for generality there (a Condition per future,
a Python-level semaphore, a queue, two locks per submit). Here each long-lived runner
thread sleeps on a wake-up of its own; a submit pops an idle runner, puts the call in
its slot and wakes it. No lock is shared by submitters unless every runner is busy.

The wake-ups are pipes where the platform has ``poll()``: Linux wakes a pipe's reader
as a synchronous hand-over, on the CPU the writer is about to leave, where a lock's
futex wake-up sends it to another CPU. On a loaded host that halves the cost of the
two hops (measured: ``docs/benchmarks.md``). A waiter listens on a pipe of its own
thread; a wake-up there only says "look again" (the call's own flag decides), so a
late one from a call the thread stopped waiting for is harmless.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import os
import select
import threading
import time
import weakref
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable
from functools import cache
from typing import Any, Generic, TypeVar

__all__ = ["Pending", "Runners", "Threads"]

T = TypeVar("T")

#: Pipes and poll() wake threads cheaply; elsewhere (Windows) bare locks do.
_PIPES = hasattr(select, "poll") and hasattr(os, "set_blocking")


@cache  # looked up on first use: loading libc costs milliseconds at import
def cpu_finder() -> Callable[[], int] | None:
    """Return ``sched_getcpu`` where runners can follow their waiter's CPU, else None."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        import ctypes

        getcpu: Callable[[], int] = ctypes.CDLL(None, use_errno=True).sched_getcpu
        return getcpu if getcpu() >= 0 else None
    except (AttributeError, OSError):  # no such call in this libc
        return None


#: This process's id, kept up to date by a fork hook: no system call per request.
process = [os.getpid()]


class _Ear:
    """A thread's own pipe, on which runners say that a call it waits for ended."""

    __slots__ = ("pid", "poll", "read", "write")

    def __init__(self) -> None:
        self.pid = process[0]
        self.read, self.write = os.pipe()
        os.set_blocking(self.read, False)
        os.set_blocking(self.write, False)
        self.poll = select.poll()
        self.poll.register(self.read, select.POLLIN)

    def __del__(self) -> None:
        # Only once no Pending holds it (a Pending keeps its waiter's ear): a runner
        # never writes to a closed, perhaps reused, descriptor.
        try:
            os.close(self.read)
            os.close(self.write)
        except (OSError, TypeError):  # at interpreter exit os may be half gone
            pass


_local = threading.local()


def _ear() -> _Ear:
    ear: _Ear | None = getattr(_local, "ear", None)
    if ear is None or ear.pid != process[0]:  # a forked child shares no pipe
        ear = _local.ear = _Ear()
    return ear


class Pending(Generic[T]):
    """The result of one handed-off call, for one waiting thread at a time."""

    __slots__ = ("_done", "_ear", "_error", "_finished", "_value")

    def __init__(self) -> None:
        self._done = allocate_lock()
        self._done.acquire()
        self._finished = False
        self._ear: _Ear | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        """Whether the call has ended (its result is there)."""
        return self._finished

    def result(self, timeout: float | None = None) -> T:
        """Wait for the call; raise ``concurrent.futures.TimeoutError`` past ``timeout``."""
        if not self._finished:
            if _PIPES:
                self._wait(timeout)
            elif not self._done.acquire(True, -1 if timeout is None else timeout):
                raise concurrent.futures.TimeoutError
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def _wait(self, timeout: float | None) -> None:
        ear = self._ear = _ear()
        end = None if timeout is None else time.monotonic() + timeout
        while not self._finished:  # checked after the ear is set: see _end()
            wait = -1 if end is None else math.ceil(max(0.0, end - time.monotonic()) * 1000)
            if not ear.poll.poll(wait):
                if self._finished:
                    return
                if end is not None and time.monotonic() >= end:
                    raise concurrent.futures.TimeoutError
                continue
            try:  # noqa: SIM105 - suppress() costs a context manager per wait
                os.read(ear.read, 4096)  # this wake-up and any late ones
            except BlockingIOError:
                pass

    def _run(self, func: Callable[..., T], args: tuple[Any, ...]) -> None:
        """Make the call; the runner then calls :meth:`_end`."""
        try:
            self._value = func(*args)
        except BaseException as exc:  # handed back to the waiter, as a future would
            self._error = exc

    def _end(self) -> None:
        self._finished = True
        self._done.release()
        ear = self._ear  # read after the flag: a waiter sets its ear, then reads the flag
        if ear is not None:
            try:  # noqa: SIM105 - as above
                os.write(ear.write, b"\0")
            except OSError:  # full of late wake-ups: its waiter is awake and reading
                pass


_Job = tuple[Pending[Any], Callable[..., Any], tuple[Any, ...]]
#: Put in an idle runner's slot to end its thread.
_STOP: Any = object()


class _Slot:
    """One runner thread's mailbox: a call, and how to wake the thread for it."""

    __slots__ = ("go", "held", "home", "job", "read", "tid", "write")

    def __init__(self, job: _Job | None) -> None:
        self.job: Any = job
        #: The runner thread's native id and CPU set, once it runs; whether it is held to one.
        self.tid = 0
        self.home: set[int] = set()
        self.held = False
        if _PIPES:
            self.read, self.write = os.pipe()
        else:
            self.go = allocate_lock()
            self.go.acquire()

    def wake(self) -> None:
        if _PIPES:
            os.write(self.write, b"\0")
        else:
            self.go.release()

    def sleep(self) -> None:
        if _PIPES:
            os.read(self.read, 1)
        else:
            self.go.acquire()

    def close(self) -> None:
        if _PIPES:
            os.close(self.read)
            os.close(self.write)

    def hold(self, cpu: int) -> None:
        """Wake this slot's thread on ``cpu`` (its waiter's); it lets go once running."""
        if not self.tid:  # not started yet: it starts where the scheduler puts it
            return
        try:
            os.sched_setaffinity(self.tid, (cpu,))
            self.held = True
        except OSError:  # not allowed here (a sandbox): leave it to the scheduler for good
            self.tid = 0

    def let_go(self) -> None:
        """From this slot's own thread: run anywhere again (threads it starts inherit it)."""
        if self.held:
            self.held = False
            try:  # noqa: SIM105 - as above
                os.sched_setaffinity(0, self.home)
            except OSError:
                pass


class _Pool:
    """The state the runner threads share; they never hold the :class:`Runners` itself."""

    def __init__(self, max_threads: int, name: str, cpu: Callable[[], int] | None) -> None:
        self.max_threads = max_threads
        self.name = name
        #: Where waiters' CPUs can be found and followed (see the module's docstring).
        self.cpu = cpu
        self.lock = threading.Lock()
        #: Runners waiting for a call; popped and appended whole (atomic in CPython).
        self.idle: list[_Slot] = []
        #: Calls waiting for a runner, when all ``max_threads`` are busy.
        self.backlog: deque[_Job] = deque()
        self.threads: list[threading.Thread] = []
        self.closed = False

    def submit_slow(self, job: _Job) -> None:
        """Hand ``job`` over when no runner was idle: wake one, start one, or queue it."""
        with self.lock:
            if self.closed:
                raise RuntimeError("runners closed")
            if self.idle:
                slot = self.idle.pop()
                slot.job = job
                slot.wake()
            elif len(self.threads) < self.max_threads:
                slot = _Slot(job)
                thread = threading.Thread(target=_serve, args=(self, slot), name=self.name)
                self.threads.append(thread)
                thread.start()
            else:
                self.backlog.append(job)

    def after(self, slot: _Slot) -> Any:
        """A runner finished a call: its next one, ``_STOP``, or None (it went idle)."""
        with self.lock:
            if self.backlog:
                return self.backlog.popleft()
            if self.closed:
                return _STOP
            self.idle.append(slot)
            return None

    def close(self) -> list[threading.Thread]:
        """Stop the idle runners now and the busy ones after their calls."""
        with self.lock:
            self.closed = True  # from now on no runner goes idle
            threads = list(self.threads)
        while True:
            try:  # one pop per slot, as submit() pops: each slot has one owner
                slot = self.idle.pop()
            except IndexError:
                return threads
            slot.job = _STOP
            slot.wake()

    def forget(self) -> None:
        """In a forked child: the parent's threads do not exist here."""
        self.lock = threading.Lock()
        for slot in self.idle:
            slot.close()
        self.idle, self.threads = [], []
        self.backlog.clear()


#: Every pool with runner threads, for the exit hook and the fork hook.
_live: weakref.WeakSet[_Pool] = weakref.WeakSet()
#: Every :class:`Threads`, for the fork hook.
_live_threads: weakref.WeakSet[Threads] = weakref.WeakSet()


class Runners:
    """Up to ``max_threads`` long-lived threads running handed-off calls.

    The threads stop when :meth:`close` is called, when the object is collected, and at
    interpreter exit, after the calls already handed over have run.
    """

    def __init__(self, max_threads: int = 64, name: str = "gptimg-webhooks-run") -> None:
        self.max_threads = max_threads
        self.name = name
        self._pool = pool = _Pool(max_threads, name, cpu_finder())
        _live.add(pool)
        # Collected without close(): its threads stop (they hold the pool, not this).
        weakref.finalize(self, pool.close)

    def submit(self, func: Callable[..., T], *args: Any) -> Pending[T]:
        """Run ``func(*args)`` in a runner thread; return its :class:`Pending` result."""
        pending: Pending[T] = Pending()
        self._hand(pending, func, args)
        return pending

    def call(self, timeout: float, func: Callable[..., T], *args: Any) -> Pending[T]:
        """Run ``func(*args)`` in a runner thread and wait for it up to ``timeout``.

        Return its :class:`Pending`, finished or not (:meth:`Pending.result` waits on).
        Everything the wait needs is ready before the runner is woken, so the waiter
        is asleep by the time the runner wants to run.
        """
        pending: Pending[T] = Pending()
        if not _PIPES:
            self._hand(pending, func, args)
            pending._done.acquire(True, timeout)
            return pending
        ear = pending._ear = _ear()
        end = time.monotonic() + timeout
        self._hand(pending, func, args, self._pool.cpu)
        while not pending._finished:
            if not ear.poll.poll(math.ceil(max(0.0, end - time.monotonic()) * 1000)):
                if time.monotonic() >= end:
                    break
                continue
            try:  # noqa: SIM105 - suppress() costs a context manager per wait
                os.read(ear.read, 4096)
            except BlockingIOError:
                pass
        return pending

    def _hand(
        self,
        pending: Pending[T],
        func: Callable[..., T],
        args: tuple[Any, ...],
        cpu: Callable[[], int] | None = None,
    ) -> None:
        """Hand the call to an idle runner, woken on the CPU ``cpu()`` gives if any."""
        pool = self._pool
        try:
            slot = pool.idle.pop()  # the common case: no shared lock at all
        except IndexError:
            pool.submit_slow((pending, func, args))
            return
        if cpu is not None:
            slot.hold(cpu())
        slot.job = (pending, func, args)
        slot.wake()

    @property
    def _threads(self) -> list[threading.Thread]:
        return self._pool.threads

    def close(self, wait: bool = False) -> None:
        """Stop the threads once the calls already handed over have run."""
        threads = self._pool.close()
        if wait:
            for thread in threads:
                thread.join()


class Threads:
    """Threads of their own for blocking user code awaited from async code.

    ``asyncio.to_thread`` shares the loop's default executor, ``min(32, CPUs + 4)``
    threads, with everything else in the process: with handlers that block for seconds
    in it, a ledger's call (SQLite's, Django's) queues behind them and answers late, and a
    worker told to run 16 handlers at once runs six on a 2-CPU host. The threads start on
    first use (again in a forked child), and each call runs in a copy of the caller's
    context, as with ``to_thread``.
    """

    def __init__(self, max_threads: int, name: str) -> None:
        self.max_threads = max_threads
        self.name = name
        self._forget()
        _live_threads.add(self)

    def _forget(self) -> None:
        """Start afresh (and in a forked child, where the parent's threads do not exist)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # loops in several threads may start it together

    def submit(self, func: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Start ``func(*args)`` in one of the threads, in a copy of this context."""
        executor = self._executor or self._start()
        return executor.submit(contextvars.copy_context().run, func, *args)

    def _start(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    self.max_threads, thread_name_prefix=self.name
                )
            return self._executor

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` in one of the threads and return its result."""
        return await asyncio.wrap_future(self.submit(func, *args))

    def close(self) -> None:
        """Let the threads end once their calls have run."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


def _serve(pool: _Pool, slot: _Slot) -> None:
    if pool.cpu is not None:
        slot.home = os.sched_getaffinity(0)
        slot.tid = threading.get_native_id()
    job = slot.job
    slot.job = None
    try:
        while True:
            while job is not None and job is not _STOP:
                pending = job[0]
                pending._run(job[1], job[2])
                # Idle (or on to the next call) before the waiter wakes: a caller that
                # submits again at once finds this thread instead of starting another.
                job = pool.after(slot)
                pending._end()
                del pending  # let the result go with its waiter
            if job is _STOP:
                return
            slot.sleep()
            slot.let_go()
            job = slot.job
            slot.job = None
    finally:
        slot.close()


def _at_exit() -> None:
    """Stop every runner thread; the interpreter then joins them (they are not daemons)."""
    for pool in list(_live):
        pool.close()


def _after_fork() -> None:
    process[0] = os.getpid()
    for pool in list(_live):
        pool.forget()
    for threads in list(_live_threads):
        threads._forget()


# threading's own hook runs before the interpreter joins non-daemon threads (the one
# concurrent.futures uses); plain atexit would run after that join, too late.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every CPython from 3.9 has it
    import atexit

    atexit.register(_at_exit)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
