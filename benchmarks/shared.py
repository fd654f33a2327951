"""One model for many workers: a shared host, with and without batching, against in-process.

Celery ``prefork -c 4`` on Redis and gunicorn ``-w 4`` (sync workers) over
HTTP on 127.0.0.1 serve ``benchmarks/shared_app.py`` with a Dense
64→5000→5000→10 model (~100 MB of weights), three ways: (a) every worker
loads the model in-process, (b) ``isolation="shared"`` with the library's
batching defaults, (c) ``isolation="shared", max_batch=1`` (no batching).

One pool lives at a time: PSS splits a shared page among every process that
maps it, so two pools alive together would split TensorFlow's library pages
and flatter each other. Rounds rotate the order of the configurations, so
the machine's noise hits them alike. Each pool is warmed until every worker
has answered; then this process puts a closed-loop load on it (``--clients``
requests in flight: HTTP client threads, or a window of Celery tasks, each
request ``--rows`` rows), counts answers per second over ``--seconds`` and
takes p50/p99 latency (send → answer over HTTP; send → the task's finish
for Celery); then the total PSS of the master, its workers and the shared
host. All of them carry an environment marker: the host is started by
``subprocess.Popen`` from a worker, which passes the worker's environment on.

The batching knobs are measured by ``benchmarks/shared_knobs.py``.

    python -m benchmarks.shared [--workers 4] [--hidden 5000] [--rows 4] [--clients 8]
        [--seconds 10] [--warm 1] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import tempfile
import uuid
from typing import Any

from benchmarks import serving
from benchmarks._common import build_model, summary, write_json
from benchmarks.celery_pools import REDIS, redis_available

KINDS = ("celery", "gunicorn")
CONFIGS: dict[str, dict[str, str]] = {
    "in-process": {"FSB_ISOLATION": "inprocess"},
    "shared, batching": {"FSB_ISOLATION": "shared"},
    "shared, max_batch=1": {"FSB_ISOLATION": "shared", "FSB_MAX_BATCH": "1"},
}
BASE, BATCHED = "in-process", "shared, batching"


def measure(
    kind: str, env: dict[str, str], rows: int, model: str, args: Any, log: str
) -> dict[str, Any]:
    """Start one pool, warm it, load it, take its memory; stop it."""
    requests = serving.payloads(rows)
    with serving.pool(kind, args.workers, {**env, "FSB_MODEL": model}, log) as pool:
        warm = serving.warm(pool, requests, args.workers)
        loadavg = os.getloadavg()[0]
        figures, records = serving.loaded(pool, requests, args.clients, args.warm, args.seconds)
        marked = serving.marked(pool.marker)
        hosts = {a["host_pid"] for _, _, a in records + [(0, 0, a) for a in warm]} - {None}
        roles = {
            pid: "master" if pid == pool.master else "host" if pid in hosts else "worker"
            for pid in marked
        }
        memory = {pid: serving.memory_mb(pid) for pid in marked}
    if not hosts <= set(marked):
        raise RuntimeError(f"shared host {hosts} is not among the pool's processes {marked}")
    answers = [a for _, _, a in records] + warm
    by_role: dict[str, float] = collections.defaultdict(float)
    for pid, role in roles.items():
        by_role[role] += memory[pid][0]
    return {
        **figures,
        "pss_total_mb": round(sum(m[0] for m in memory.values()), 1),
        "uss_total_mb": round(sum(m[1] for m in memory.values()), 1),
        "pss_by_role_mb": {role: round(mb, 1) for role, mb in sorted(by_role.items())},
        "processes": dict(collections.Counter(roles.values())),
        "in_effect": sorted({str(a["in_effect"]) for a in answers}),
        "hosts": len(hosts),
        "workers_imported_tensorflow": len({a["pid"] for a in answers if a["tensorflow"]}),
        "loadavg_1min": [round(loadavg, 2), round(os.getloadavg()[0], 2)],
    }


def _rounds(kinds: tuple[str, ...], model: str, args: Any, log_dir: str) -> dict[str, Any]:
    """Each pool once per round; each round starts one pool later."""
    keys = [(kind, name) for kind in kinds for name in CONFIGS]
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in keys}
    for index in range(args.rounds):
        for kind, name in keys[index % len(keys) :] + keys[: index % len(keys)]:
            log = os.path.join(log_dir, f"{kind}-{uuid.uuid4().hex[:6]}.log")
            row = measure(kind, CONFIGS[name], args.rows, model, args, log)
            runs[kind, name].append(row)
            print(
                f"{kind:<9}{name:<22}{row['requests_per_s']:7.1f}/s  p50 "
                f"{row['latency_ms']['p50']:6.1f} ms  p99 {row['latency_ms']['p99']:6.1f} ms  "
                f"PSS {row['pss_total_mb']:6.0f} MB {row['processes']}  "
                f"load {row['loadavg_1min']}",
                flush=True,
            )
    return {kind: _summarise({n: runs[k, n] for k, n in keys if k == kind}) for kind in kinds}


def _summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        row: dict[str, Any] = {
            "requests_per_s": summary([r["requests_per_s"] for r in rows]),
            "p50_ms": summary([r["latency_ms"]["p50"] for r in rows]),
            "p99_ms": summary([r["latency_ms"]["p99"] for r in rows]),
            "pss_total_mb": summary([r["pss_total_mb"] for r in rows]),
            "uss_total_mb": summary([r["uss_total_mb"] for r in rows]),
            "rounds": rows,
        }
        # Medians of per-round ratios: each round's pools ran minutes apart at most.
        for key in ("requests_per_s", "pss_total_mb"):
            ratios = [r[key] / b[key] for r, b in zip(rows, runs[BASE], strict=True)]
            row[f"{key}_ratio"] = statistics.median(ratios)
            row[f"{key}_ratios"] = ratios
        out[name] = row
    return out


def forget_hosts(directory: str) -> None:
    """Remove the socket, lock and log that this run's shared hosts left behind.

    (A shared host that exits leaves them in the user's runtime directory;
    the next host of the same source and options would reuse them.)
    """
    from forksafe._host.shared import runtime_dir

    runtime = runtime_dir()
    for name in os.listdir(runtime):
        if not name.endswith(".log"):
            continue
        path = os.path.join(runtime, name)
        with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
            if directory not in f.read():
                continue
        for suffix in (".log", ".lock", ".sock"):
            with contextlib.suppress(OSError):
                os.unlink(path[: -len(".log")] + suffix)


def main(argv: list[str] | None = None) -> int:
    """Measure the pools and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=4, help="rows per request")
    parser.add_argument("--clients", type=int, default=8, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured load per pool")
    parser.add_argument("--warm", type=float, default=1.0, help="load before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    kinds = KINDS
    if not redis_available():
        reason = f"no Redis server at {REDIS}"
        if os.environ.get("CI") == "true":
            raise SystemExit(f"shared benchmark: {reason}")
        print(f"shared benchmark: Celery skipped: {reason}")
        kinds = ("gunicorn",)
    report: dict[str, Any] = {
        "workers": args.workers,
        "hidden": args.hidden,
        "rows": args.rows,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(
            directory, "shared.keras", inputs=64, hidden=(args.hidden, args.hidden), outputs=10
        )
        report["model_mb"] = round(os.path.getsize(model) / 1e6, 1)
        try:
            report.update(_rounds(kinds, model, args, directory))
        finally:
            forget_hosts(directory)
    report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    for kind in kinds:
        row = report[kind][BATCHED]
        print(
            f"{kind}: shared+batching / in-process: PSS x{row['pss_total_mb_ratio']:.3f}, "
            f"throughput x{row['requests_per_s_ratio']:.3f}"
        )
    write_json(args.json, {"shared": report})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
