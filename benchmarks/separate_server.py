"""A shared host beside the separate model server a user would pick instead (LitServe).

Celery ``prefork -c 4`` on Redis serves ``benchmarks/shared_app.py`` with the
Dense 64→5000→5000→10 model (~100 MB of weights) two ways: (a)
``isolation="shared"`` with the library's batching defaults, (b) the workers
post each task's rows to a LitServe server with dynamic batching
(``benchmarks/litserve_app.py``: up to 16 requests of 4 rows joined, i.e. the
same 64 rows as (a), waiting at most 5 ms, as (a) does).

Memory: each configuration alone, warmed, then loaded for ``--settle``
seconds: the total PSS of the Celery master and workers and of the shared
host or every LitServe process. Time: both alive at once and loaded in turn,
``--rounds`` rounds of ``--seconds`` slices, alternating which goes first; a
closed loop of ``--clients`` tasks in flight (``--rows`` rows each);
tasks/s, p50/p99 (send → the task's finish). Every answer is checked: each
task's top 3 labels against the bare Keras model's for the same rows.

    python -m benchmarks.separate_server [--workers 4] [--hidden 5000] [--rows 4]
        [--clients 8] [--seconds 5] [--warm 1] [--rounds 5] [--settle 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks import serving
from benchmarks._common import build_model, marked, stop_session, summary
from benchmarks._render import emit, mmm, ratios, skipped, target
from benchmarks.celery_pools import REDIS, redis_available
from benchmarks.shared import forget_hosts
from forksafe.testing import run_in_subprocess

SHARED, LITSERVE = "forksafe shared host", "LitServe"
_LITSERVE_BATCH = {"FSB_MAX_BATCH": "16", "FSB_BATCH_TIMEOUT_MS": "5"}


def top3_of(model: str, payloads: list[Any]) -> dict[float, list[list[int]]]:
    """The bare model's top 3 labels for each payload, by its first number (in a fresh process)."""
    import keras
    import numpy as np

    bare = keras.models.load_model(model)
    tops = {}
    for rows in payloads:
        logits = np.asarray(bare.predict_on_batch(np.asarray(rows, dtype="float32")))
        tops[rows[0][0]] = [[int(i) for i in row] for row in np.argsort(-logits, axis=1)[:, :3]]
    return tops


@contextlib.contextmanager
def litserve(model: str, log: str) -> Iterator[tuple[int, str]]:
    """A LitServe server of ``model`` on a free port, until the block ends: (port, marker)."""
    port = serving.free_port()
    marker = f"FSB_MARKER=forksafe-bench-litserve-{uuid.uuid4().hex}"
    env = {**os.environ, **_LITSERVE_BATCH, "FSB_MODEL": model, "FSB_PORT": str(port)}
    env["FSB_MARKER"] = marker.partition("=")[2]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.litserve_app"],
            cwd=serving.ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not _healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                with open(log, encoding="utf-8", errors="replace") as f:
                    raise RuntimeError(f"LitServe did not start:\n{f.read()[-3000:]}")
            time.sleep(0.5)
        yield port, marker
    finally:
        stop_session(process, 30)
        for pid in marked(marker):  # its workers, should they have left its group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def configuration(name: str, model: str, args: Any, logs: str) -> Iterator[tuple[Any, list[str]]]:
    """The Celery pool of ``name`` (and its LitServe server): the pool and its markers."""
    log = os.path.join(logs, f"{uuid.uuid4().hex[:8]}.log")
    env = {"FSB_MODEL": model}
    with contextlib.ExitStack() as stack:
        markers = []
        if name == LITSERVE:
            port, marker = stack.enter_context(litserve(model, log + ".litserve"))
            env |= {"FSB_ISOLATION": "litserve", "FSB_LITSERVE_PORT": str(port)}
            markers.append(marker)
        else:
            env["FSB_ISOLATION"] = "shared"
        pool = stack.enter_context(serving.pool("celery", args.workers, env, log))
        yield pool, [pool.marker, *markers]


def _pss(markers: list[str]) -> dict[str, Any]:
    pids = {pid for marker in markers for pid in marked(marker)}
    return {
        "pss_total_mb": round(sum(serving.memory_mb(pid)[0] for pid in pids), 1),
        "processes": len(pids),
    }


def _checked(answers: list[Any], tops: dict[float, list[list[int]]]) -> int:
    """How many answers were checked; any that differs from the bare model's is an error.

    A benchmark of wrong answers measures nothing.
    """
    wrong = sum(a["top"] != tops[a["key"]] for a in answers)
    if wrong:
        raise RuntimeError(f"{wrong} of {len(answers)} answers differ from the bare model's")
    return len(answers)


def measure(model: str, args: Any, logs: str) -> dict[str, Any]:
    """Memory of each alone, then time with both alive; every answer checked."""
    requests = serving.payloads(args.rows)
    tops = run_in_subprocess(top3_of, model, requests, timeout=600)
    names = [SHARED, LITSERVE]
    out: dict[str, Any] = {name: {"rounds": []} for name in names}
    checked = 0
    for name in names:
        with configuration(name, model, args, logs) as (pool, markers):
            checked += _checked(serving.warm(pool, requests, args.workers), tops)
            _, records = serving.loaded(pool, requests, args.clients, 0.0, args.settle)
            checked += _checked([a for _, _, a in records], tops)
            out[name] |= _pss(markers)
            print(f"{name:<22}PSS {out[name]['pss_total_mb']:6.0f} MB", flush=True)
    with contextlib.ExitStack() as stack:
        pools = {
            name: stack.enter_context(configuration(name, model, args, logs)) for name in names
        }
        for pool, _ in pools.values():
            checked += _checked(serving.warm(pool, requests, args.workers), tops)
        for index in range(args.rounds):
            for name in names if index % 2 == 0 else names[::-1]:
                figures, records = serving.loaded(
                    pools[name][0], requests, args.clients, args.warm, args.seconds
                )
                checked += _checked([a for _, _, a in records], tops)
                out[name]["rounds"].append(figures)
                print(
                    f"{name:<22}{figures['requests_per_s']:7.1f} tasks/s  p50 "
                    f"{figures['latency_ms']['p50']:6.1f} ms  p99 "
                    f"{figures['latency_ms']['p99']:6.1f} ms",
                    flush=True,
                )
    for name in names:
        rows = out[name]["rounds"]
        out[name]["tasks_per_s"] = summary([r["requests_per_s"] for r in rows])
        out[name]["p50_ms"] = summary([r["latency_ms"]["p50"] for r in rows])
        out[name]["p99_ms"] = summary([r["latency_ms"]["p99"] for r in rows])
    per_round = [
        s["requests_per_s"] / ls["requests_per_s"]
        for s, ls in zip(out[SHARED]["rounds"], out[LITSERVE]["rounds"], strict=True)
    ]
    out["throughput_ratio"] = statistics.median(per_round)
    out["throughput_ratios"] = per_round
    out["pss_ratio"] = out[SHARED]["pss_total_mb"] / out[LITSERVE]["pss_total_mb"]
    out["answers_checked"] = checked
    return out


def render(data: dict[str, Any]) -> list[str]:
    """The two configurations side by side, for RESULTS.md."""
    part = data["separate_server"]
    head = ["## A shared host beside a separate model server (`benchmarks/separate_server.py`)"]
    if "skipped" in part:
        return [*head, "", *skipped(part)]
    out = [
        *head,
        "",
        f"Celery `prefork -c {part['workers']}` on Redis, Dense 64→{part['hidden']}→"
        f"{part['hidden']}→10 ({part['model_mb']:.0f} MB `.keras`), {part['clients']} tasks in "
        f'flight of {part["rows"]} rows each: `isolation="shared"` (default batching) against '
        "the workers posting to a LitServe server with dynamic batching (16 requests, 5 ms; "
        "`benchmarks/litserve_app.py`). Memory: each alone, total PSS of the Celery master "
        "and workers and the shared host or every LitServe process. Time: both alive, "
        f"{part['rounds']} rounds of {part['seconds']:g} s slices, alternating order; ratio: "
        f"median of the per-round ratios. {part['answers_checked']} answers checked against "
        f"the bare model, none wrong. Load average {part['loadavg_1min_start']:.1f} at the "
        f"start, {part['loadavg_1min_end']:.1f} at the end, {part['cpus']} CPUs.",
        "",
        "| configuration | processes | total PSS MB | tasks/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in (SHARED, LITSERVE):
        row = part[name]
        out.append(
            f"| {name} | {row['processes']} | {row['pss_total_mb']:.0f} | "
            f"{mmm(row['tasks_per_s'])} | {mmm(row['p50_ms'])} | {mmm(row['p99_ms'])} |"
        )
    out += [
        "",
        f"Shared / LitServe: tasks/s {part['throughput_ratio']:.2f} "
        f"(per round {ratios(part['throughput_ratios'])}), total PSS {part['pss_ratio']:.2f}.",
    ]
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Shared ahead of the separate server: more tasks/s, no more memory."""
    part = data.get("separate_server", {})
    return [
        target(
            "Celery prefork: tasks/s, shared host / LitServe",
            part.get("throughput_ratio"),
            1.3,
            "",
            most=False,
        ),
        target(
            "Celery prefork: total PSS, shared host / LitServe",
            part.get("pss_ratio"),
            1.0,
            "",
            most=True,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure both configurations and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=4, help="rows per task")
    parser.add_argument("--clients", type=int, default=8, help="tasks in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured load per slice")
    parser.add_argument("--warm", type=float, default=1.0, help="load before each slice")
    parser.add_argument("--rounds", type=int, default=5, help="slices per configuration")
    parser.add_argument("--settle", type=float, default=5.0, help="load before the memory")
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    if not redis_available():
        reason = f"no Redis server at {REDIS}"
        if os.environ.get("CI") == "true":
            raise SystemExit(f"separate_server benchmark: {reason}")
        emit(args.json, {"separate_server": {"skipped": reason}}, render)
        return 0
    report: dict[str, Any] = {
        **{k: getattr(args, k) for k in ("workers", "hidden", "rows", "clients", "seconds")},
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
            report |= measure(model, args, directory)
        finally:
            forget_hosts(directory)
    report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    emit(args.json, {"separate_server": report}, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
