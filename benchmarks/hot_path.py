"""Thin entry point: the suite's in-process section (``python -m benchmarks --only micro``).

.venv/bin/python benchmarks/hot_path.py [--quick]
.venv/bin/python benchmarks/hot_path.py --against REV   # this tree beside an earlier commit
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts benchmarks/ first on the path, where http.py would
    # shadow the standard library's http (and with it httpx, svix and Starlette).
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    if any(arg.startswith("--against") for arg in sys.argv[1:]):
        from benchmarks.against import main as against

        against(sys.argv[1:])
        sys.exit()
    from benchmarks.run import main

    main(["--only", "micro", "--no-docs", "--out", "/dev/null", *sys.argv[1:]])
