"""One model for many workers: a shared host, with and without batching, against in-process.

Celery ``prefork -c 4`` on Redis and gunicorn ``-w 4`` (sync workers) over
HTTP on 127.0.0.1 serve ``benchmarks/shared_app.py`` with a Dense
64→5000→5000→10 model (~100 MB of weights), three ways: (a) every worker
loads the model in-process, (b) ``isolation="shared"`` with the library's
batching defaults, (c) ``isolation="shared", max_batch=1`` (no batching).

Memory: each pool alone (PSS splits a shared page among every process that
maps it, so two pools alive together would split TensorFlow's library pages
and flatter each other): warmed until every worker has answered, loaded for
``--settle`` seconds, then the total PSS of the master, its workers and the
shared host. All of them carry an environment marker: the host is started
by ``subprocess.Popen`` from a worker, which passes the environment on.

Time: the three pools of a server kind alive at once (idle, a pool costs the
loaded one nothing: its workers block in ``accept`` or on the broker, its
host in ``recv``), loaded in turn: ``--rounds`` rounds of ``--seconds``
slices, each round starting one pool later, so that the machine's noise
hits them alike and each round's slices make a pair for the ratios. The
load is a closed loop from this process: ``--clients`` requests in flight
(HTTP client threads, or a window of Celery tasks), ``--rows`` rows each;
requests/s over the slice, p50/p99 latency (send → answer over HTTP; send →
the task's finish for Celery).

The batching knobs are measured by ``benchmarks/shared_knobs.py``.

    python -m benchmarks.shared [--workers 4] [--hidden 5000] [--rows 4] [--clients 8]
        [--seconds 5] [--warm 1] [--rounds 6] [--settle 5] [--json FILE]
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
from benchmarks._common import build_model, marked, summary
from benchmarks._render import emit, mmm, ratios, target
from benchmarks.celery_pools import REDIS, redis_available

KINDS = ("celery", "gunicorn")
CONFIGS: dict[str, dict[str, str]] = {
    "in-process": {"FSB_ISOLATION": "inprocess"},
    "shared, batching": {"FSB_ISOLATION": "shared"},
    "shared, max_batch=1": {"FSB_ISOLATION": "shared", "FSB_MAX_BATCH": "1"},
}
BASE, BATCHED = "in-process", "shared, batching"


def _sizes(pool: serving.Pool, answers: list[Any]) -> dict[str, Any]:
    """The memory of ``pool``'s processes, by role; where the model ran, as its answers say."""
    processes = marked(pool.marker)
    hosts = {a["host_pid"] for a in answers} - {None}
    if not hosts <= set(processes):
        raise RuntimeError(f"shared host {hosts} is not among the pool's processes {processes}")
    roles = {
        pid: "master" if pid == pool.master else "host" if pid in hosts else "worker"
        for pid in processes
    }
    sizes = {pid: serving.memory_mb(pid) for pid in processes}
    by_role: dict[str, float] = collections.defaultdict(float)
    for pid, role in roles.items():
        by_role[role] += sizes[pid][0]
    return {
        "pss_total_mb": round(sum(m[0] for m in sizes.values()), 1),
        "uss_total_mb": round(sum(m[1] for m in sizes.values()), 1),
        "pss_by_role_mb": {role: round(mb, 1) for role, mb in sorted(by_role.items())},
        "processes": dict(collections.Counter(roles.values())),
        "in_effect": sorted({str(a["in_effect"]) for a in answers}),
        "hosts": len(hosts),
        "workers_imported_tensorflow": len({a["pid"] for a in answers if a["tensorflow"]}),
    }


def memory(kind: str, name: str, model: str, args: Any, log: str) -> dict[str, Any]:
    """One pool alone: warmed, loaded for ``--settle`` seconds, then its processes' memory."""
    requests = serving.payloads(args.rows)
    with serving.pool(kind, args.workers, {**CONFIGS[name], "FSB_MODEL": model}, log) as pool:
        answers = serving.warm(pool, requests, args.workers)
        _, records = serving.loaded(pool, requests, args.clients, 0.0, args.settle)
        row = _sizes(pool, answers + [a for _, _, a in records])
    print(f"{kind:<9}{name:<22}PSS {row['pss_total_mb']:6.0f} MB {row['processes']}", flush=True)
    return row


def timing(kind: str, model: str, args: Any, log_dir: str) -> tuple[Any, dict[str, Any]]:
    """The pools of ``kind`` alive at once, loaded in turn, round after round.

    Returns each pool's slices, and its memory taken at the end (with the
    other pools alive: comparable only without ``--memory-alone``).
    """
    names = list(CONFIGS)
    requests = serving.payloads(args.rows)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    answers: dict[str, list[Any]] = {}
    with contextlib.ExitStack() as stack:
        pools = {}
        for name in names:
            log = os.path.join(log_dir, f"{kind}-time-{uuid.uuid4().hex[:6]}.log")
            env = {**CONFIGS[name], "FSB_MODEL": model}
            pools[name] = stack.enter_context(serving.pool(kind, args.workers, env, log))
            answers[name] = serving.warm(pools[name], requests, args.workers)
        for index in range(args.rounds):
            for name in names[index % len(names) :] + names[: index % len(names)]:
                figures, records = serving.loaded(
                    pools[name], requests, args.clients, args.warm, args.seconds
                )
                answers[name] += [a for _, _, a in records]
                figures["loadavg_1min"] = round(os.getloadavg()[0], 2)
                runs[name].append(figures)
                print(
                    f"{kind:<9}{name:<22}{figures['requests_per_s']:7.1f}/s  p50 "
                    f"{figures['latency_ms']['p50']:6.1f} ms  p99 "
                    f"{figures['latency_ms']['p99']:6.1f} ms  load {figures['loadavg_1min']}",
                    flush=True,
                )
        sizes = {name: _sizes(pools[name], answers[name]) for name in names}
    return runs, sizes


def _summarise(
    sizes: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        # Medians of per-round ratios: a round's slices ran within a minute of each other.
        ratios = [
            r["requests_per_s"] / b["requests_per_s"] for r, b in zip(rows, runs[BASE], strict=True)
        ]
        out[name] = {
            **sizes[name],
            "pss_total_mb_ratio": sizes[name]["pss_total_mb"] / sizes[BASE]["pss_total_mb"],
            "requests_per_s": summary([r["requests_per_s"] for r in rows]),
            "requests_per_s_ratio": statistics.median(ratios),
            "requests_per_s_ratios": ratios,
            "p50_ms": summary([r["latency_ms"]["p50"] for r in rows]),
            "p99_ms": summary([r["latency_ms"]["p99"] for r in rows]),
            "rounds": rows,
        }
    return out


def forget_hosts(directory: str) -> None:
    """Remove the socket, lock and log that this run's shared hosts left behind.

    (A shared host that exits leaves its log in the user's runtime directory,
    one that was killed its socket and lock too; the next host of the same
    source and options would reuse them.)
    """
    from forksafe._host.runtime_dir import runtime_dir

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


def render(data: dict[str, Any]) -> list[str]:
    """Memory and time of each pool, in-process and shared, for RESULTS.md."""
    pools = data["shared"]
    out = [
        "## One model for many workers (`benchmarks/shared.py`)",
        "",
        f"Dense 64→{pools['hidden']}→{pools['hidden']}→10, {pools['model_mb']:.0f} MB "
        f"`.keras`, served by "
        f"{pools['workers']} workers: Celery `prefork` on Redis and gunicorn `sync` over HTTP "
        "on 127.0.0.1 (`benchmarks/shared_app.py`: rows → `predict_on_batch` → top 3). "
        '*in-process*: each worker loads the model; *shared*: `isolation="shared"`, one '
        "host for the pool, with the default batching or `max_batch=1`. Memory: total PSS "
        "of all the pool's processes (master, workers, shared host) "
        + (
            f"with the pool alone, after {pools['settle_s']:g} s of load. "
            if pools.get("memory_alone", True)
            else "**after the time phase, with the three pools of a server alive at once "
            "and sharing library pages: not comparable**. "
        )
        + "Time: the three pools of a server alive at once "
        f"and loaded in turn, {pools['rounds']} rounds of {pools['seconds']:g} s slices "
        f"rotating the order; a closed loop of {pools['clients']} requests in flight "
        f"({pools['rows']} rows each; HTTP client threads, or a window of Celery tasks). "
        "Latency: send → answer (Celery: send → the task's finish). Throughput ratio: "
        "median of the per-round ratios to *in-process*. Load average (1 min) "
        f"{pools['loadavg_1min_start']:.1f} at the start, {pools['loadavg_1min_end']:.1f} at "
        f"the end, {pools.get('cpus', '?')} CPUs.",
        "",
        "| server | configuration | processes | total PSS MB | PSS by role MB | PSS ratio "
        "| requests/s | throughput ratio (per round) | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in KINDS:
        for name, row in pools.get(kind, {}).items():
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(row["processes"].items()))
            roles = ", ".join(f"{k} {v:.0f}" for k, v in row["pss_by_role_mb"].items())
            out.append(
                f"| {kind} | {name} | {kinds} | {row['pss_total_mb']:.0f} | {roles} | "
                f"{row['pss_total_mb_ratio']:.2f} | {mmm(row['requests_per_s'])} | "
                f"{row['requests_per_s_ratio']:.2f} ({ratios(row['requests_per_s_ratios'])}) "
                f"| {mmm(row['p50_ms'])} | {mmm(row['p99_ms'])} |"
            )
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A shared host with batching: well under the memory of in-process, at least its speed."""
    shared = data.get("shared", {})
    workers = shared.get("workers", 4)
    rows = []
    for kind, label in (
        ("celery", f"Celery prefork -c {workers}"),
        ("gunicorn", f"gunicorn -w {workers} sync"),
    ):
        row = shared.get(kind, {}).get(BATCHED, {})
        rows.append(
            target(
                f"{label}: total PSS, shared host with batching / in-process",
                row.get("pss_total_mb_ratio"),
                0.5,
                "",
                most=True,
            )
        )
        rows.append(
            target(
                f"{label}: requests/s, shared host with batching / in-process",
                row.get("requests_per_s_ratio"),
                1.2,
                "",
                most=False,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Measure the pools and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=4, help="rows per request")
    parser.add_argument("--clients", type=int, default=8, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured load per slice")
    parser.add_argument("--warm", type=float, default=1.0, help="load before each slice")
    parser.add_argument("--rounds", type=int, default=6, help="slices per pool")
    parser.add_argument("--settle", type=float, default=5.0, help="load before the memory")
    parser.add_argument(
        "--memory-alone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take each pool's memory alone (--no-memory-alone: from the pools of the time "
        "phase, all alive at once, which share library pages: quicker, not comparable)",
    )
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
        "settle_s": args.settle,
        "memory_alone": args.memory_alone,
        "cpus": os.cpu_count(),
        "loadavg_1min_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(
            directory, "shared.keras", inputs=64, hidden=(args.hidden, args.hidden), outputs=10
        )
        report["model_mb"] = round(os.path.getsize(model) / 1e6, 1)
        try:
            alone: dict[str, dict[str, Any]] = {}
            for kind in kinds:
                for index, name in enumerate(CONFIGS if args.memory_alone else ()):
                    log = os.path.join(directory, f"{kind}-memory-{index}.log")
                    alone.setdefault(kind, {})[name] = memory(kind, name, model, args, log)
            for kind in kinds:
                runs, together = timing(kind, model, args, directory)
                report[kind] = _summarise(alone.get(kind, together), runs)
        finally:
            forget_hosts(directory)
    report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    emit(args.json, {"shared": report}, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
