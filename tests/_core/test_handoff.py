from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import threading
import time

import pytest

from gptimg_webhooks._core import handoff
from gptimg_webhooks._core.handoff import Runners, Threads
from tests.support import forked
from tests.support.concurrency import Peak


def test_a_call_runs_in_another_thread_and_returns_its_value() -> None:
    runners = Runners(max_threads=2)
    assert runners.submit(lambda a, b: (a + b, threading.current_thread().name), 2, 3).result(
        timeout=5
    ) == (5, "gptimg-webhooks-run")
    runners.close(wait=True)


def test_a_timeout_raises_and_the_result_still_comes_later() -> None:
    runners = Runners()
    gate = threading.Event()
    pending = runners.submit(lambda: gate.wait(5) and "late")
    with pytest.raises(concurrent.futures.TimeoutError):
        pending.result(timeout=0.05)
    gate.set()
    assert pending.result() == "late"
    assert pending.result(timeout=0) == "late"  # read again at once
    runners.close(wait=True)


def test_the_calls_exception_reaches_the_waiter() -> None:
    runners = Runners()

    def broken() -> None:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        runners.submit(broken).result(timeout=5)
    runners.close(wait=True)


def test_sequential_calls_reuse_one_thread_and_close_stops_it() -> None:
    runners = Runners(max_threads=8)
    names = {runners.submit(threading.get_ident).result(timeout=5) for _ in range(50)}
    assert len(names) == 1
    threads = list(runners._threads)
    runners.close(wait=True)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError):
        runners.submit(int)


def test_concurrent_calls_get_threads_up_to_the_bound() -> None:
    runners = Runners(max_threads=3)
    gate = threading.Event()
    pendings = [runners.submit(lambda: (gate.wait(5), threading.get_ident())[1]) for _ in range(6)]
    gate.set()
    idents = {p.result(timeout=5) for p in pendings}
    assert 1 <= len(idents) <= 3
    assert len(runners._threads) == 3
    runners.close(wait=True)


def test_call_waits_up_to_its_timeout_and_returns_the_pending_finished_or_not() -> None:
    runners = Runners()
    fast = runners.call(5, lambda: "now")
    assert fast.finished
    assert fast.result(timeout=0) == "now"
    gate = threading.Event()
    slow = runners.call(0.05, lambda: gate.wait(5) and "later")
    assert not slow.finished
    gate.set()
    assert slow.result(timeout=5) == "later"
    runners.close(wait=True)


def test_a_late_end_of_an_abandoned_call_does_not_end_the_next_wait_early() -> None:
    runners = Runners(max_threads=4)
    gate, release = threading.Event(), threading.Event()

    def abandoned() -> str:
        gate.wait(5)
        return "abandoned"

    first = runners.submit(abandoned)
    with pytest.raises(concurrent.futures.TimeoutError):
        first.result(timeout=0.02)  # this thread stops waiting for it

    def slow() -> str:
        gate.set()  # the abandoned call ends (and wakes this thread's pipe) meanwhile
        release.wait(5)
        return "slow"

    second = runners.submit(slow)
    with pytest.raises(concurrent.futures.TimeoutError):
        second.result(timeout=0.3)  # a stray wake-up must not end this wait
    release.set()
    assert second.result(timeout=5) == "slow"
    assert first.result(timeout=5) == "abandoned"
    runners.close(wait=True)


def _cpus() -> list[int]:
    if handoff.cpu_finder() is None:
        pytest.skip("this platform cannot move a thread to a CPU")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("one CPU: nowhere else a runner could wake")
    return cpus


def _waiting_on(cpu: int, runners: Runners, calls: int) -> list[tuple[int, set[int]]]:
    """Make ``calls`` waited calls from a thread held to ``cpu``; where each one ran."""
    where = handoff.cpu_finder()
    assert where is not None
    seen: list[tuple[int, set[int]]] = []

    def waiter() -> None:
        os.sched_setaffinity(0, {cpu})
        for _ in range(calls):
            seen.append(runners.call(5, lambda: (where(), os.sched_getaffinity(0))).result())

    thread = threading.Thread(target=waiter)
    thread.start()
    thread.join()
    return seen


def test_a_waited_call_runs_on_the_waiters_cpu_with_every_cpu_allowed() -> None:
    cpus = _cpus()
    runners = Runners(max_threads=1)
    runners.submit(int).result(timeout=5)  # the runner exists, idle, started from here
    calls = same = 0
    for cpu in cpus[:2] * 3:
        for ran_on, allowed in _waiting_on(cpu, runners, 20):
            calls += 1
            same += ran_on == cpu
            # Held only to wake there: the call itself, and threads it starts, may move.
            assert allowed == set(cpus)
    runners.close(wait=True)
    # Once awake a runner may be moved by the scheduler (a busy host), rarely so soon.
    assert same >= 0.8 * calls, f"{same} of {calls} calls ran on their waiter's CPU"


def test_runners_still_run_calls_where_threads_may_not_choose_a_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpus = _cpus()

    def refused(pid: int, mask: object) -> None:
        raise PermissionError("sched_setaffinity refused by the sandbox")

    runners = Runners(max_threads=1)
    runners.submit(int).result(timeout=5)
    monkeypatch.setattr(os, "sched_setaffinity", refused)
    ran = [runners.call(5, lambda: threading.get_native_id()).result() for _ in range(5)]
    assert len(set(ran)) == 1 and ran[0] != threading.get_native_id()
    monkeypatch.undo()
    assert os.sched_getaffinity(0) == set(cpus)
    runners.close(wait=True)


_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("_WHO", default="nobody")


def test_threads_run_calls_in_their_own_named_threads_in_the_callers_context() -> None:
    threads = Threads(2, "test-threads")

    def where() -> tuple[str, str]:
        return threading.current_thread().name, _WHO.get()

    async def call() -> tuple[str, str]:
        _WHO.set("the caller")
        return await threads.run(where)

    name, who = asyncio.run(call())
    threads.close()
    assert name.startswith("test-threads") and who == "the caller"


def test_threads_cap_how_many_calls_run_at_once() -> None:
    threads = Threads(3, "test-threads")
    peak = Peak()

    def busy() -> None:
        with peak.inside():
            time.sleep(0.05)

    async def many() -> None:
        await asyncio.gather(*(threads.run(busy) for _ in range(9)))

    asyncio.run(many())
    threads.close()
    assert 1 < peak.most <= 3


# Forking with threads alive is the point (Python 3.12 warns about it).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_threads_start_afresh_in_a_forked_child() -> None:
    threads = Threads(2, "test-threads")
    assert asyncio.run(threads.run(os.getpid)) == os.getpid()  # started in the parent
    [(pid, ran_in)] = forked.in_children(
        [lambda: (os.getpid(), asyncio.run(threads.run(os.getpid)))]
    )
    assert ran_in == pid != os.getpid()
    threads.close()
