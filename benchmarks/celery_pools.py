"""Celery on the real Redis broker: prefork + forksafe against the thread-pool workaround.

Each configuration is a real ``celery worker`` subprocess with 2 slots
(``solo`` has one), Celery's default prefetch; all run at once, measured in
interleaved rounds, each round starting one configuration later. Throughput:
bursts of tasks sent at once, tasks/s from the first send to the last finish
(the task stamps ``done_at``), min/median/max over the bursts. Latency: then a
client keeps one task in flight per slot and records send → finish for each
(p50/p99). And the RSS of each worker process.

    python -m benchmarks.celery_pools [--tasks 300] [--repeat 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks._common import build_model, median_ci, stop_session, summary
from benchmarks._render import emit, mmm, pyplot, skipped, target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REDIS = os.environ.get("FSB_REDIS", "redis://127.0.0.1:6379/14")

# name: (pool, slots, how the model is held)
CONFIGS: dict[str, tuple[str, int, str]] = {
    "prefork + forksafe": ("prefork", 2, "proxy"),
    "threads (report's workaround)": ("threads", 2, "plain"),
    "threads + forksafe": ("threads", 2, "proxy"),
    "solo": ("solo", 1, "plain"),
}


def redis_available() -> bool:
    """Whether the Redis server answers a PING."""
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS, socket_timeout=2).ping())
    except Exception:
        return False


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def _worker(pool: str, slots: int, hold: str, model: str, queue: str, log: str) -> Iterator[int]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
                "-P", pool, "-c", str(slots), "-Q", queue, "-n", f"{queue}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, "FSB_BROKER": REDIS, "FSB_BACKEND": REDIS, "FSB_MODEL": model,
                 "FSB_HOLD": hold},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process.pid
    finally:
        stop_session(process, 15)


def _burst(task: Any, queue: str, tasks: int) -> float:
    """Send ``tasks`` at once; tasks/s from the first send to the last finish.

    While the burst runs this client only asks Redis, every 50 ms and in one
    command, how many results exist: collecting them as they come would take
    CPU from the workers on a small machine (from prefork's two processes more
    than from a GIL-bound thread pool). The tasks stamp their own finish time.
    """
    start = time.time()
    results = [task.apply_async((i,), queue=queue) for i in range(tasks)]
    backend = task.app.backend
    keys = [backend.get_key_for_task(r.id) for r in results]
    deadline = time.monotonic() + 120
    while backend.client.exists(*keys) < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue}: the burst did not finish within 120 s")
        time.sleep(0.05)
    return tasks / (max(r.get(timeout=10)["done_at"] for r in results) - start)


def _closed_loop(task: Any, queue: str, tasks: int, window: int) -> list[float]:
    """Keep ``window`` tasks in flight until ``tasks`` finished; send → finish seconds."""
    in_flight: collections.deque[tuple[float, Any]] = collections.deque()
    latencies: list[float] = []
    sent = 0
    while len(latencies) < tasks:
        while sent < tasks and len(in_flight) < window:
            in_flight.append((time.time(), task.apply_async((sent,), queue=queue)))
            sent += 1
        sent_at, result = in_flight.popleft()
        latencies.append(result.get(timeout=60)["done_at"] - sent_at)
    return latencies


def _warm(name: str, queue: str, slots: int, log: str) -> None:
    from benchmarks.celery_app import classify

    try:
        # Every slot has loaded and traced before anything is timed.
        for result in [classify.apply_async((i,), queue=queue) for i in range(4 * slots)]:
            result.get(timeout=180)
    except Exception as exc:
        with open(log, encoding="utf-8", errors="replace") as f:
            raise RuntimeError(f"{name}: warm-up failed ({exc!r}):\n{f.read()[-3000:]}") from exc


def run_all(model: str, tasks: int, repeat: int, log_dir: str) -> dict[str, Any]:
    """Start every configuration at once, then measure them in interleaved rounds.

    Idle workers block on the broker, so they cost the one being measured
    nothing, and machine noise hits every configuration alike.
    """
    from benchmarks.celery_app import app, classify

    queues = {name: f"bench-{uuid.uuid4().hex[:8]}" for name in CONFIGS}
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    latencies: dict[str, list[float]] = {name: [] for name in CONFIGS}
    rss: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stack:
        pids = {}
        for name, (pool, slots, hold) in CONFIGS.items():
            log = os.path.join(log_dir, f"{pool}-{hold}.log")
            pids[name] = stack.enter_context(_worker(pool, slots, hold, model, queues[name], log))
        for name, (pool, slots, hold) in CONFIGS.items():
            _warm(name, queues[name], slots, os.path.join(log_dir, f"{pool}-{hold}.log"))
        names = list(CONFIGS)
        for index in range(repeat):
            # Each round starts one configuration later: none always follows another.
            for name in names[index % len(names) :] + names[: index % len(names)]:
                rates[name].append(_burst(classify, queues[name], tasks))
        for name, (_pool, slots, _hold) in CONFIGS.items():
            latencies[name] = _closed_loop(classify, queues[name], tasks, window=slots)
        for name, pid in pids.items():
            rss[name] = {str(p): _rss_mb(p) for p in [pid, *_children(pid)]}
    app.control.purge()
    report = {}
    for name, (pool, slots, hold) in CONFIGS.items():
        ms = np.asarray(latencies[name]) * 1e3
        report[name] = {
            "pool": pool,
            "slots": slots,
            "model": hold,
            "tasks_per_s": summary(rates[name]),
            "bursts_tasks_per_s": rates[name],
            "latency_ms": {
                "p50": float(np.percentile(ms, 50)),
                "p99": float(np.percentile(ms, 99)),
                "max": float(ms.max()),
            },
            "latencies_ms": [round(v, 3) for v in ms.tolist()],
            "rss_mb": rss[name],
            "rss_total_mb": sum(rss[name].values()),
        }
    return report


def render(data: dict[str, Any]) -> list[str]:
    """Throughput, latency and memory of each worker, for RESULTS.md."""
    celery = data["celery"]
    out = ["## Celery on Redis (`benchmarks/celery_pools.py`)", ""]
    if "skipped" in celery:
        return out + skipped(celery)
    out += [
        "Mixed task (`benchmarks/celery_app.py`): 64 signals of 1024 samples → numpy FFT",
        "and Python-level feature code → `predict_on_batch` (Dense 64→256→256→10) →",
        "softmax and top-3 as plain Python. Worker slots: 2 (`solo`: 1).",
        "",
        "Ratios are the median of per-round ratios, with a bootstrap 95 % interval.",
        "",
        "| worker | tasks/s | ratio to threads workaround | p50 ms | p99 ms | RSS per process MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in celery.items():
        rss = " + ".join(f"{mb:.0f}" for mb in row["rss_mb"].values())
        out.append(
            f"| {name} | {mmm(row['tasks_per_s'])} | "
            f"{row['ratio_to_threads_workaround']:.2f} ({row['ratio_ci95'][0]:.2f}-"
            f"{row['ratio_ci95'][1]:.2f}) | {row['latency_ms']['p50']:.1f} | "
            f"{row['latency_ms']['p99']:.1f} | {rss} |"
        )
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Prefork with forksafe serves more tasks than the report's thread-pool workaround."""
    prefork = data.get("celery", {}).get("prefork + forksafe")
    return [
        target(
            "Celery prefork + forksafe / threads workaround, tasks/s",
            prefork and prefork["ratio_to_threads_workaround"],
            1.5,
            "",
            most=False,
            interval=prefork and prefork["ratio_ci95"],
        )
    ]


def plots(data: dict[str, Any], out: str) -> list[tuple[str, str]]:
    """celery.png: latency and throughput by worker (nothing without matplotlib)."""
    celery = data["celery"]
    plt = pyplot()
    if plt is None or "skipped" in celery:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(celery)
    left.boxplot(
        [celery[n]["latencies_ms"] for n in names], vert=False, whis=(1, 99), showfliers=False
    )
    left.set_yticks(range(1, len(names) + 1), names)
    left.set_xlabel("send → finish, ms (whiskers p1-p99)")
    left.set_title("Celery task latency, one task in flight per slot")
    right.barh(names, [celery[n]["tasks_per_s"]["median"] for n in names])
    right.set_yticks(range(len(names)), [""] * len(names))
    right.set_xlabel("tasks/s (median of bursts)")
    right.set_title("Celery throughput, Redis broker")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "celery.png"), dpi=90)
    plt.close(fig)
    return [("Celery: latency and throughput by pool", "celery.png")]


def main(argv: list[str] | None = None) -> int:
    """Run every configuration and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    if not redis_available():
        reason = f"no Redis server at {REDIS}"
        if os.environ.get("CI") == "true":
            raise SystemExit(f"celery benchmark: {reason}")
        emit(args.json, {"celery": {"skipped": reason}}, render)
        return 0
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(directory, "celery.keras", inputs=64, hidden=(256, 256), outputs=10)
        report = run_all(model, args.tasks, args.repeat, directory)
    base = report["threads (report's workaround)"]["bursts_tasks_per_s"]
    for row in report.values():
        # Median of the per-round ratios: each round's bursts ran minutes apart at most.
        ratios = [r / b for r, b in zip(row["bursts_tasks_per_s"], base, strict=True)]
        row["ratio_to_threads_workaround"] = statistics.median(ratios)
        row["ratio_ci95"] = median_ci(ratios)
    emit(args.json, {"celery": report}, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
