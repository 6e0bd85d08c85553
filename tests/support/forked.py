"""Run functions in forked children and collect their results, never waiting forever.

A child that hangs (one forked while another thread held a lock it needs) would leave
the parent blocked on a queue, and the whole run waiting: here it is killed at the
deadline and the test fails, naming it.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

#: The start method: children share the test's closures, stores and barriers.
context = multiprocessing.get_context("fork")


def _run(target: Callable[[], Any], out: Connection) -> None:
    try:
        out.send(("ok", target()))
    except BaseException as exc:
        out.send(("error", repr(exc)))
    finally:
        out.close()


class Children:
    """Forked children, one per target, started at once; :meth:`results` collects them."""

    def __init__(self, targets: Sequence[Callable[[], Any]], timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._pipes = [context.Pipe(duplex=False) for _ in targets]
        self._children = [
            context.Process(target=_run, args=(target, out), daemon=True)
            for target, (_, out) in zip(targets, self._pipes, strict=True)
        ]
        for child in self._children:
            child.start()
        for _, out in self._pipes:
            out.close()  # the children hold their ends: a dead child's pipe reads as closed

    def results(self) -> list[Any]:
        """Return each target's result in order.

        Fail the test if a child raised, died, or had not answered within ``timeout``
        seconds of its start (it is killed then).
        """
        outcomes = [self._outcome(n) for n in range(len(self._children))]
        for child in self._children:
            child.join(timeout=max(0.0, self._deadline - time.monotonic()) + 5)
            if child.is_alive():
                child.kill()
                child.join()
        errors = [payload for kind, payload in outcomes if kind != "ok"]
        assert not errors, errors
        return [payload for _, payload in outcomes]

    def _outcome(self, n: int) -> tuple[str, Any]:
        received = self._pipes[n][0]
        try:
            if received.poll(max(0.0, self._deadline - time.monotonic())):
                outcome: tuple[str, Any] = received.recv()
                return outcome
            return ("error", f"child {n} gave no answer within {self.timeout} s")
        except EOFError:
            child = self._children[n]
            child.join(timeout=5)
            return ("error", f"child {n} died without an answer (exit code {child.exitcode})")
        finally:
            received.close()


def in_children(targets: Sequence[Callable[[], Any]], timeout: float = 60.0) -> list[Any]:
    """Run each target in a forked child at once; return their results in order."""
    return Children(targets, timeout).results()
