"""Thin entry point: the suite's HTTP section (``python -m benchmarks --only http``).

.venv/bin/python benchmarks/http_path.py [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.run import main

    main(["--only", "http", "--no-docs", "--out", "/dev/null", *sys.argv[1:]])
