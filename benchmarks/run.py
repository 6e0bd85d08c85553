"""Run the benchmark suite, write its results JSON, docs/benchmarks.md and the plots.

    .venv/bin/python -m benchmarks            # the whole suite (about 10 minutes)
    .venv/bin/python -m benchmarks --quick    # a short run (about 2 minutes)
    .venv/bin/python -m benchmarks --only micro,ledgers --compare old.json

Figures only, never a pass or fail: the machine this runs on is shared and noisy, so
every comparison is made in one run, interleaved, and quoted as a paired ratio.
``--compare OLD.json`` flags each figure more than 10% worse than in OLD.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("micro", "ledgers", "http")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer, shorter rounds)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections: micro,ledgers,http")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument(
        "--docs",
        type=Path,
        default=ROOT / "docs",
        help="where benchmarks.md and benchmarks/*.png go",
    )
    parser.add_argument("--no-docs", action="store_true", help="write the JSON only")
    parser.add_argument("--compare", type=Path, help="an earlier results JSON to compare with")
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace those sections in the --out JSON, keep the others",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS",
        help="rewrite the docs from an earlier results JSON, measuring nothing",
    )
    args = parser.parse_args(argv)
    if args.report_only is not None:
        from .report import targets, write_docs

        results = json.loads(args.report_only.read_text())
        results["targets"] = targets(results)
        args.report_only.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        for path in write_docs(results, args.docs, None):
            print(f"wrote {path}")
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    old = None
    if args.compare is not None:
        try:
            old = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare: cannot read {args.compare}: {exc}")

    sys.path.insert(0, str(ROOT))
    started = time.monotonic()
    results: dict[str, Any] = {"meta": _meta(args.quick, only)}
    if "micro" in only:
        from . import micro

        print("micro: one delivery in process, interleaved with the floor and the peers")
        results["micro"] = {"headline": micro.headline(args.quick)}
        _print_headline(results["micro"]["headline"])
        print("micro: cost against body size")
        results["micro"]["body_size"] = micro.body_sizes(args.quick)
        print("micro: cost against the number of handlers")
        results["micro"]["handlers"] = micro.handler_counts(args.quick)
        print("micro: the ASGI app in process, beside its twin")
        results["micro"]["asgi"] = micro.asgi_apps(args.quick)
        for name, figures in results["micro"]["asgi"].items():
            print(
                f"  {name:52} {figures['us']['median']:8.2f} us  "
                f"{figures['vs ' + micro.ASGI_TWIN]['median']:5.2f}x the twin"
            )
        print("micro: the reply deadline's thread hop, beside two bare threads")
        results["micro"]["hop"] = micro.hop(args.quick)
        for name, figures in (results["micro"]["hop"] or {}).items():
            print(f"  {name:66} {figures['us']['median']:7.2f} us")
        print("micro: where the full path's time goes (cProfile)")
        results["micro"]["profile"] = micro.profile(args.quick)
    if "ledgers" in only:
        from . import ledgers

        print("ledgers: claim latency against ledger size")
        results["ledgers"] = {"by_size": ledgers.by_size(args.quick)}
        print("ledgers: the sweep against a backlog of pending records")
        results["ledgers"]["backlog"] = ledgers.backlog(args.quick)
        print("ledgers: network stores against a bare round trip")
        results["ledgers"]["network"] = ledgers.network(args.quick)
        print("ledgers: memory per record")
        results["ledgers"]["memory"] = ledgers.memory_bytes(args.quick)
    if "http" in only:
        from . import http

        print("http: real servers under wrk")
        results["http"] = http.run(args.quick)
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    if args.update and args.out.exists():
        # A partial run: the other sections stay those of the earlier run, and the page
        # says which run each section comes from.
        earlier = json.loads(args.out.read_text())
        meta = earlier["meta"]
        meta.setdefault("updated", {})
        for section in only:
            meta["updated"][section] = {
                k: results["meta"][k] for k in ("date", "load_average_at_start", "seconds")
            }
        results = {**earlier, **{k: v for k, v in results.items() if k != "meta"}, "meta": meta}

    from .report import compare, targets

    results["targets"] = targets(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    if not args.no_docs:
        from .report import write_docs

        for path in write_docs(results, args.docs, old):
            print(f"wrote {path}")
    print("\ntargets:")
    for row in results["targets"]:
        print(f"  {row['verdict']:5} {row['target']}: {row['figure']}")
    if old is not None:
        worse = compare(old, results)
        print(f"\ncompared with {args.compare}: {len(worse)} figure(s) more than 10% worse")
        for line in worse:
            print(f"  {line}")


def _meta(quick: bool, only: list[str]) -> dict[str, Any]:
    import pydantic

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 1) for x in load],
        "pydantic": pydantic.VERSION,
        "quick": quick,
        "sections": only,
        "command": "python -m benchmarks" + (" --quick" if quick else ""),
    }


def _print_headline(headline: dict[str, Any]) -> None:
    for name, figures in headline.items():
        us = figures["us"]
        ratio = figures["vs hand-written"]["median"]
        print(
            f"  {name:45} {us['median']:8.2f} us  [{us['min']:.2f}..{us['max']:.2f}]  "
            f"{ratio:5.2f}x the hand-written path"
        )
