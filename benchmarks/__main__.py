"""Run every benchmark, each in a fresh process, and write the results.

    python -m benchmarks [--quick] [--only core host ...] [--merge] [--out DIR]
    python -m benchmarks --render [--out DIR]

Writes ``DIR/bench-results.json`` (machine, versions, every figure),
``DIR/RESULTS.md`` (the tables and the targets) and PNG plots in ``DIR``.
The default ``DIR`` is ``benchmarks/``: the committed results. With
``--merge``, the sections not run now are kept from ``DIR/bench-results.json``;
``--render`` runs nothing and writes RESULTS.md and the plots again from it.
The sections are listed in ``benchmarks/sections.py``.
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
from benchmarks.sections import BY_NAME, SECTIONS

HERE = os.path.dirname(os.path.abspath(__file__))


def run_section(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one section's module in a fresh interpreter; return its JSON report."""
    section = BY_NAME[name]
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "section.json")
        start = time.monotonic()
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                section.module,
                "--json",
                out,
                *(section.quick if quick else ()),
            ],
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
    result["versions"] = report.versions()
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    names = [section.name for section in SECTIONS]
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--out", default=HERE, help="where to write (default: benchmarks/)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="per section, seconds (default: the section's, 600 for most)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the other sections of DIR/bench-results.json"
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="run nothing: write RESULTS.md and the plots again from DIR/bench-results.json",
    )
    return parser


def write(results: dict[str, Any], out: str) -> None:
    """Targets into ``results``; then bench-results.json, the plots and RESULTS.md in ``out``."""
    results["targets"] = report.targets(results["sections"])
    with open(os.path.join(out, "bench-results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    plots = report.plots(results["sections"], out)
    with open(os.path.join(out, "RESULTS.md"), "w", encoding="utf-8") as f:
        f.write(report.markdown(results, plots))
    for row in results["targets"]:
        print(f"{'met ' if row['met'] else 'MISS'} {row['target']}: {row['value']}")
    print(f"wrote {out}/RESULTS.md and bench-results.json ({results['wall_s']:.0f} s of runs)")


def main(argv: list[str] | None = None) -> int:
    """Run the sections, then write JSON, Markdown and plots."""
    args = _parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(os.path.join(args.out, "bench-results.json"), encoding="utf-8") as f:
            write(json.load(f), args.out)
        return 0
    started = time.monotonic()
    previous = _previous(args.out, args.quick) if args.merge else {}
    sections = dict(previous.get("sections", {}))
    for section in SECTIONS:
        if section.name in args.only:
            print(f"== {section.name}", flush=True)
            timeout = args.timeout or section.timeout_s
            sections[section.name] = run_section(section.name, args.quick, timeout)
    here, installed = report.machine(), report.versions()
    for data in sections.values():  # results from before sections recorded their own
        data.setdefault("machine", previous.get("machine", here))
        data.setdefault("versions", previous.get("versions", installed))
    results = {
        "machine": here,
        # A merge keeps the versions the kept sections were measured with; the line
        # in RESULTS.md names each section that differs from them.
        "versions": previous.get("versions", installed),
        "quick": args.quick,
        "wall_s": sum(data["wall_s"] for data in sections.values())
        if args.merge
        else time.monotonic() - started,
        "sections": {s.name: sections[s.name] for s in SECTIONS if s.name in sections},
    }
    write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
