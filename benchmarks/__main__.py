"""``python -m benchmarks``: see :mod:`benchmarks.run`."""

from __future__ import annotations

from .run import main

main()
