"""Count how many calls run at once, from any thread."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Peak:
    """How many callers are inside :meth:`inside` at once; ``most``: the highest seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    @contextmanager
    def inside(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


def default_executor_threads() -> int:
    """How many threads ``asyncio.to_thread`` has on this host (asyncio's own default)."""
    return min(32, (os.cpu_count() or 1) + 4)
