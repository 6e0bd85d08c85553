"""Thin entry point: the suite's in-process section (``python -m benchmarks --only micro``).

.venv/bin/python benchmarks/hot_path.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.run import main

    main(["--only", "micro", "--no-docs", "--out", "/dev/null", *sys.argv[1:]])
