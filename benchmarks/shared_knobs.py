"""A shared host's batching knobs, ``max_wait_ms`` and ``max_batch``: under load and alone.

gunicorn ``-w 4`` (sync workers) serving ``benchmarks/shared_app.py`` over
HTTP with ``isolation="shared"``, one ``max_batch:max_wait_ms`` per pool
(``--grid``; ``@rows`` sets a point's rows per request). Only time is
measured here, not memory, so the pools of one group (the points with the
same rows per request) live at once, each with its host (the options are
part of a host's identity; ~1.3 GB a pool with the default model), and are
loaded in turn: rounds of short slices, each round starting one pool later,
so that the machine's noise hits every point alike. Idle pools cost the
loaded one nothing: their workers block in ``accept``, their hosts in ``recv``.

Each slice: ``--clients`` requests in flight for ``--seconds`` (requests/s,
p50, p99), then one request at a time for ``--alone`` seconds: with no
company to wait for, what ``max_wait_ms`` costs a lone request.

    python -m benchmarks.shared_knobs [--grid 64:2@4 ...] [--workers 4] [--hidden 5000]
        [--clients 8] [--seconds 5] [--alone 2] [--warm 1] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from typing import Any

from benchmarks import serving
from benchmarks._common import build_model, summary
from benchmarks._render import emit, mmm
from benchmarks.shared import forget_hosts

# max_wait_ms at the pools' load (4 rows a request), max_batch at 16 rows a
# request (so that 4 workers can put 64 rows in flight); no batching at both.
GRID = [
    "64:0@4", "64:1@4", "64:2@4", "64:5@4", "64:10@4", "1:0@4",
    "8:2@16", "32:2@16", "64:2@16", "128:2@16", "1:0@16",
]  # fmt: skip


def _point(text: str) -> tuple[str, str, int]:
    options, _, rows = text.partition("@")
    batch, wait = options.split(":")
    return batch, wait, int(rows or 4)


def _group(points: list[str], model: str, args: Any, log_dir: str) -> dict[str, Any]:
    """Start the pools of ``points`` at once; load each in turn, round after round."""
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in points}
    with contextlib.ExitStack() as stack:
        pools = {}
        for point in points:
            batch, wait, rows = _point(point)
            env = {"FSB_ISOLATION": "shared", "FSB_MAX_BATCH": batch, "FSB_MAX_WAIT_MS": wait}
            log = os.path.join(log_dir, f"knobs-{point.replace(':', '-')}.log")
            pools[point] = stack.enter_context(
                serving.pool("gunicorn", args.workers, {**env, "FSB_MODEL": model}, log)
            )
            serving.warm(pools[point], serving.payloads(rows), args.workers)
        for index in range(args.rounds):
            for point in points[index % len(points) :] + points[: index % len(points)]:
                requests = serving.payloads(_point(point)[2])
                loaded, _ = serving.loaded(
                    pools[point], requests, args.clients, args.warm, args.seconds
                )
                alone, _ = serving.loaded(pools[point], requests, 1, 0.2, args.alone)
                runs[point].append(
                    {**loaded, "alone_ms": alone["latency_ms"], "loadavg_1min": os.getloadavg()[0]}
                )
                print(
                    f"{point:<10}{loaded['requests_per_s']:7.1f}/s  p50 "
                    f"{loaded['latency_ms']['p50']:6.1f} ms  p99 {loaded['latency_ms']['p99']:6.1f}"
                    f" ms  alone p50 {alone['latency_ms']['p50']:6.1f} ms  "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
    return {
        point: {
            "rows": _point(point)[2],
            "max_batch": int(_point(point)[0]),
            "max_wait_ms": float(_point(point)[1]),
            "requests_per_s": summary([r["requests_per_s"] for r in rows]),
            "p50_ms": summary([r["latency_ms"]["p50"] for r in rows]),
            "p99_ms": summary([r["latency_ms"]["p99"] for r in rows]),
            "alone_p50_ms": summary([r["alone_ms"]["p50"] for r in rows]),
            "alone_p99_ms": summary([r["alone_ms"]["p99"] for r in rows]),
            "rounds": rows,
        }
        for point, rows in runs.items()
    }


def render(data: dict[str, Any]) -> list[str]:
    """Requests/s and latency at each point of the grid, for RESULTS.md."""
    knobs = data["shared_knobs"]
    out = [
        "## Shared host batching knobs (`benchmarks/shared_knobs.py`)",
        "",
        f"gunicorn, {knobs['workers']} sync workers, one shared host per configuration; the "
        "configurations with the same rows per request run at once and are loaded in turn, "
        f"{knobs['rounds']} rounds rotating the order. Under load: {knobs['clients']} requests "
        f"in flight, {knobs['seconds']:g} s counted; alone: one request at a time, "
        f"{knobs['alone_seconds']:g} s. At most {knobs['workers']} x (rows per request) rows "
        "can wait at once: a `max_batch` above that cannot change anything. Load average "
        f"(1 min) {knobs['loadavg_1min_start']:.1f} at the start, "
        f"{knobs['loadavg_1min_end']:.1f} at the end.",
        "",
        "| rows per request | max_batch | max_wait_ms | requests/s | p50 ms | p99 ms "
        "| alone: p50 ms | alone: p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in knobs["grid"].values():
        out.append(
            f"| {row['rows']} | {row['max_batch']} | {row['max_wait_ms']:g} | "
            f"{mmm(row['requests_per_s'])} | {mmm(row['p50_ms'])} | {mmm(row['p99_ms'])} "
            f"| {mmm(row['alone_p50_ms'])} | {mmm(row['alone_p99_ms'])} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure every point of the grid and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", nargs="+", default=GRID, help="max_batch:max_wait_ms[@rows]")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=8, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured load per slice")
    parser.add_argument("--alone", type=float, default=2.0, help="lone requests per slice, s")
    parser.add_argument("--warm", type=float, default=1.0, help="load before measuring")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    groups: dict[int, list[str]] = {}
    for point in args.grid:
        groups.setdefault(_point(point)[2], []).append(point)
    report: dict[str, Any] = {
        "workers": args.workers,
        "clients": args.clients,
        "seconds": args.seconds,
        "alone_seconds": args.alone,
        "rounds": args.rounds,
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
        "grid": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(
            directory, "knobs.keras", inputs=64, hidden=(args.hidden, args.hidden), outputs=10
        )
        report["model_mb"] = round(os.path.getsize(model) / 1e6, 1)
        try:
            for points in groups.values():
                report["grid"].update(_group(points, model, args, directory))
        finally:
            forget_hosts(directory)
    report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    emit(args.json, {"shared_knobs": report}, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
