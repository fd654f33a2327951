"""Run every benchmark, each in a fresh process, and write the results.

    python -m benchmarks [--quick] [--only core host ...] [--merge] [--out DIR]

Writes ``DIR/bench-results.json`` (machine, versions, every figure),
``DIR/RESULTS.md`` (the tables and the targets) and PNG plots in ``DIR``.
The default ``DIR`` is ``benchmarks/``: the committed results. With
``--merge``, the sections not run now are kept from ``DIR/bench-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import report

HERE = os.path.dirname(os.path.abspath(__file__))

# Tiny pools for --quick: 2 workers, a small model, a second of load, one round, memory
# taken while the pools of a server are all alive (not comparable: a smoke run).
_SMALL_POOLS = [
    "--workers", "2", "--hidden", "256", "--seconds", "1", "--warm", "0.5", "--rounds", "1",
    "--settle", "0.5", "--no-memory-alone",
]  # fmt: skip
_SMALL_GRID = ["--grid", "8:0", "64:2"]

# section: (module, full arguments, --quick arguments)
SECTIONS: dict[str, tuple[str, list[str], list[str]]] = {
    "core": ("benchmarks.core", [], ["--rounds", "3", "--calls", "20", "--forks", "2"]),
    "graph": ("benchmarks.graph", [], ["--rounds", "3", "--calls", "20"]),
    "scaling": ("benchmarks.scaling", [], ["--rounds", "2"]),
    "host": ("benchmarks.host", [], ["--rounds", "2", "--calls", "20"]),
    "celery": ("benchmarks.celery_pools", [], ["--tasks", "20", "--repeat", "1"]),
    "jax": ("benchmarks.jax_threads", [], ["--rounds", "1", "--calls", "10"]),
    "pool_memory": ("benchmarks.pool_memory", [], ["--children", "2", "--hidden", "64"]),
    "engines": ("benchmarks.engines", [], ["--batches", "4"]),
    "shared": ("benchmarks.shared", [], _SMALL_POOLS),
    "shared_knobs": (
        "benchmarks.shared_knobs",
        [],
        [*_SMALL_POOLS, "--alone", "0.5", *_SMALL_GRID],
    ),
    "servers": (
        "benchmarks.servers",
        [],
        ["--jobs", "4", "--requests", "12", "--rounds", "1"],
    ),
}
# Sections whose full run takes longer than the default limit (seconds).
TIMEOUTS = {"shared": 1800.0, "shared_knobs": 1800.0, "servers": 1800.0}


def run_section(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one section's module in a fresh interpreter; return its JSON report."""
    module, full, fast = SECTIONS[name]
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "section.json")
        start = time.monotonic()
        completed = subprocess.run(
            [sys.executable, "-m", module, "--json", out, *(fast if quick else full)],
            cwd=os.path.dirname(HERE),
            timeout=timeout,
            check=False,
        )
        if completed.returncode != 0:
            raise SystemExit(f"benchmark section {name!r} failed (exit {completed.returncode})")
        with open(out, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
    result["wall_s"] = time.monotonic() - start
    result["machine"] = report.machine()
    return result


def _previous(out: str, quick: bool) -> dict[str, Any]:
    """The results already in ``out`` (same mode only), or nothing."""
    try:
        with open(os.path.join(out, "bench-results.json"), encoding="utf-8") as f:
            previous: dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return {}
    if previous.get("quick") != quick:
        raise SystemExit("--merge: the results in the output folder were made in the other mode")
    return previous


def main(argv: list[str] | None = None) -> int:
    """Run the sections, then write JSON, Markdown and plots."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--out", default=HERE, help="where to write (default: benchmarks/)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per section, seconds (default 600, more for the long sections)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other sections of DIR/bench-results.json"
    )
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    previous = _previous(args.out, args.quick) if args.merge else {}
    sections = dict(previous.get("sections", {}))
    for name in SECTIONS:
        if name in args.only:
            print(f"== {name}", flush=True)
            timeout = args.timeout or TIMEOUTS.get(name, 600.0)
            sections[name] = run_section(name, args.quick, timeout)
    here = report.machine()
    for section in sections.values():  # results from before sections recorded their machine
        section.setdefault("machine", previous.get("machine", here))
    results = {
        "machine": here,
        "versions": report.versions(),
        "quick": args.quick,
        "wall_s": sum(section["wall_s"] for section in sections.values())
        if args.merge
        else time.monotonic() - started,
        "sections": {name: sections[name] for name in SECTIONS if name in sections},
    }
    results["targets"] = report.targets(sections)
    with open(os.path.join(args.out, "bench-results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    plots = report.plots(sections, args.out)
    with open(os.path.join(args.out, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown(results, plots))
    for row in results["targets"]:
        print(f"{'met ' if row['met'] else 'MISS'} {row['target']}: {row['value']}")
    print(f"wrote {args.out}/RESULTS.md and bench-results.json in {results['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
