"""Servers and queues per job or per request: naive, default, shared and each own workaround.

Loads are counted per process, and every answer is checked against the bare model's.

- RQ, a worker that preloads the job module and forks a work horse per job:
  jobs enqueued at once, wall time per job from the first enqueue to the
  last end. Naive (bare model at import: each horse hangs until
  ``job_timeout``), default, ``isolation="shared"``, and ``SimpleWorker``
  (no fork); shared and SimpleWorker in adjacent pairs, alternating order.
  Target: shared within 1.1x of SimpleWorker.
- HTTP, two client threads one request after another: uWSGI preforking
  (naive, default, shared, ``lazy-apps`` with the bare model), FastAPI on
  ``gunicorn -k uvicorn_worker.UvicornWorker --preload`` (naive, default,
  shared, ``--preload`` off with the bare model), and gunicorn sync workers
  with ``--max-requests`` (default, shared, ``--preload`` off). Targets:
  every request answered; no request slower than the slowest first load
  (a worker's first request, after a start or a recycle).

    python -m benchmarks.servers [--jobs 10] [--requests 40] [--rounds 3] [--only rq uwsgi ...]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks._common import build_model, stop_marked
from benchmarks._render import emit, target
from benchmarks.celery_pools import REDIS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = "benchmarks.servers_app"
KINDS = ("rq", "uwsgi", "fastapi", "recycling")
HANG_S = 10.0  # naive runs: job_timeout, harakiri, gunicorn --timeout
RECYCLE_AFTER = 5  # gunicorn --max-requests


@contextlib.contextmanager
def server(argv: list[str], env: dict[str, str], log: str, ready: str) -> Iterator[int]:
    """Run ``argv`` in a session of its own until ``ready`` is logged; stop it and its host."""
    marker = f"forksafe-bench-{uuid.uuid4().hex}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**os.environ, **env, "FSB_MARKER": marker},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            with open(log, encoding="utf-8", errors="replace") as f:
                text = f.read()
            if ready in text:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[:3]} did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        yield process.pid
    finally:
        stop_marked(process, f"FSB_MARKER={marker}", 30)


def _reference(path: str) -> np.ndarray:
    """The bare model's answer for the benchmark's rows, in a spawned process."""
    from forksafe.testing import run_in_subprocess

    return np.asarray(run_in_subprocess(_bare_answer, path, timeout=180))


def _bare_answer(path: str) -> Any:
    import keras

    return keras.models.load_model(path).predict_on_batch(ROWS)


ROWS = np.random.default_rng(7).standard_normal((8, 4)).astype("float32")


def _loads(answers: list[dict[str, Any]], reference: np.ndarray) -> dict[str, Any]:
    """Right answers, processes that answered, the most loads of one, where it ran."""
    right = sum(np.allclose(np.asarray(a["y"]), reference, atol=1e-5) for a in answers)
    return {
        "right": int(right),
        "processes": len({a["pid"] for a in answers}),
        "loads_per_process": max((a["loads"] for a in answers), default=0),
        "in_effect": sorted({a["in_effect"] for a in answers}),
    }


# RQ ------------------------------------------------------------------------------------


def rq_run(variant: str, path: str, jobs: int, tmp: str, reference: np.ndarray) -> dict[str, Any]:
    """One worker of ``variant`` on a fresh queue; ``jobs`` jobs enqueued at once."""
    from redis import Redis
    from rq import Queue

    name = f"fsb-rq-{uuid.uuid4().hex[:10]}"
    env = {"FSB_MODEL": path, "FSB_BROKER": REDIS, "FSB_QUEUE": name}
    env.update(
        {
            "naive": {"FSB_NAIVE": "1"},
            "shared": {"FSB_ISOLATION": "shared"},
            "shared, worker holds the host": {"FSB_ISOLATION": "shared", "FSB_HOLD": "1"},
            "SimpleWorker": {"FSB_RQ": "simple"},
        }.get(variant, {})
    )
    job = "noop" if variant == "horse only, no model" else "predict"
    args = () if job == "noop" else (ROWS.tolist(), False)
    timeout = HANG_S if variant == "naive" else 300
    connection = Redis.from_url(REDIS)
    try:
        argv = [sys.executable, "-m", APP]
        log = os.path.join(tmp, f"rq-{variant.replace(' ', '_')}.log")
        with server(argv, env, log, "rq worker ready"):
            queue = Queue(name, connection=connection)
            pending = [
                queue.enqueue(f"{APP}.{job}", *args, job_id=f"{name}-{i}", job_timeout=timeout)
                for i in range(jobs)
            ]
            done = _rq_wait(pending, jobs * timeout + 60)
            # Untimed, after the others: how the model is held in a horse (or the worker).
            probe = [] if job == "noop" or variant == "naive" else [
                queue.enqueue(f"{APP}.predict", ROWS.tolist(), job_id=f"{name}-probe")
            ]  # fmt: skip
            _rq_wait(probe, timeout + 60)
        return _rq_figures(done, jobs, reference, probe)
    finally:
        keys = list(connection.scan_iter(match=f"*{name}*", count=1000))
        if keys:
            connection.delete(*keys)
        connection.close()


def _rq_wait(pending: list[Any], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [job.get_status(refresh=True) for job in pending]
        if all(s in ("finished", "failed", "stopped", "canceled") for s in statuses):
            break
        time.sleep(0.05)
    return pending


def _rq_figures(
    jobs: list[Any], count: int, reference: np.ndarray, probe: list[Any]
) -> dict[str, Any]:
    for job in [*jobs, *probe]:
        job.refresh()  # its timestamps and result, as the worker left them
    finished = [job for job in jobs if job.get_status() == "finished"]
    answers = [job.return_value() for job in finished if isinstance(job.return_value(), dict)]
    right = sum(np.allclose(np.asarray(a["y"]), reference, atol=1e-5) for a in answers)
    described = [job.return_value() for job in probe if job.get_status() == "finished"]
    row: dict[str, Any] = {
        "jobs": count,
        "answered": len(finished),
        **_loads(described, reference),
        "right": int(right),
        "processes": len({a["pid"] for a in answers}),
    }
    if len(finished) == count:
        start = min(job.enqueued_at for job in jobs)
        end = max(job.ended_at for job in finished)
        row["per_job_s"] = (end - start).total_seconds() / count
    return row


def rq_section(path: str, jobs: int, rounds: int, tmp: str, ref: np.ndarray) -> dict[str, Any]:
    """Every RQ variant once, then shared and SimpleWorker in ``rounds`` adjacent pairs."""
    out: dict[str, Any] = {"jobs": jobs, "naive": rq_run("naive", path, 2, tmp, ref)}
    out["default"] = rq_run("default", path, jobs, tmp, ref)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for index in range(rounds):
        order = ("shared", "SimpleWorker") if index % 2 else ("SimpleWorker", "shared")
        got = {variant: rq_run(variant, path, jobs, tmp, ref) for variant in order}
        pairs.append((got["shared"], got["SimpleWorker"]))
    ratios = [s["per_job_s"] / w["per_job_s"] for s, w in pairs]
    out["shared"], out["SimpleWorker"] = pairs[-1]
    out["shared"]["per_job_s_rounds"] = [s["per_job_s"] for s, _ in pairs]
    out["SimpleWorker"]["per_job_s_rounds"] = [w["per_job_s"] for _, w in pairs]
    out["ratio_shared_to_simple"] = statistics.median(ratios)
    out["ratios"] = ratios
    # What the fork per job costs by itself, and the guide's setup (the worker holds the host).
    out["horse only, no model"] = rq_run("horse only, no model", path, jobs, tmp, ref)
    out["shared, worker holds the host"] = rq_run(
        "shared, worker holds the host", path, jobs, tmp, ref
    )
    return out


# HTTP ----------------------------------------------------------------------------------


def _uwsgi(port: int, variant: str) -> tuple[list[str], dict[str, str], str]:
    program = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    argv = [
        program, "--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2",
        "--enable-threads", "--module", f"{APP}:wsgi", "--chdir", ROOT, "--pythonpath", ROOT,
        "--virtualenv", sys.prefix, "--die-on-term", "--need-app",
        "--harakiri", str(int(HANG_S) if variant == "naive" else 300),
    ]  # fmt: skip
    if variant == "lazy-apps":
        argv.append("--lazy-apps")
    return argv, _app_env(variant, bare=("naive", "lazy-apps")), "spawned uWSGI worker 2"


def _gunicorn(port: int, variant: str, kind: str) -> tuple[list[str], dict[str, str], str]:
    worker = "uvicorn_worker.UvicornWorker" if kind == "fastapi" else "sync"
    argv = [
        sys.executable, "-m", "gunicorn", "-w", "2", "-k", worker, "-b", f"127.0.0.1:{port}",
        "--timeout", str(int(HANG_S) if variant == "naive" else 300),
    ]  # fmt: skip
    if variant != "--preload off":
        argv.append("--preload")
    if kind == "recycling":
        argv += ["--max-requests", str(RECYCLE_AFTER), "--max-requests-jitter", "0"]
    argv.append(f"{APP}:{'asgi' if kind == 'fastapi' else 'wsgi'}")
    return argv, _app_env(variant, bare=("naive", "--preload off")), "Booting worker"


def _app_env(variant: str, bare: tuple[str, ...]) -> dict[str, str]:
    if variant in bare:
        return {"FSB_NAIVE": "1"}
    return {"FSB_ISOLATION": "shared"} if variant == "shared" else {}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Record = tuple[float, float, Any]  # sent (monotonic), seconds, the answer or None


def _client(port: int, count: int, timeout: float, out: list[Record]) -> None:
    """Post ``count`` requests one after another; a record for each."""
    body = json.dumps({"rows": ROWS.tolist()}).encode()
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        start = time.perf_counter()
        try:
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            answer = json.loads(data) if response.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            answer = None
        finally:
            conn.close()
        out.append((start, time.perf_counter() - start, answer))


def http_run(kind: str, variant: str, path: str, requests: int, tmp: str, ref: Any) -> Any:
    """One server of ``kind`` and ``variant``; ``requests`` from two client threads."""
    port = _free_port()
    if kind == "uwsgi":
        argv, env, ready = _uwsgi(port, variant)
    else:
        argv, env, ready = _gunicorn(port, variant, kind)
    count, timeout = (2, 2 * HANG_S) if variant == "naive" else (requests, 300.0)
    records: list[list[Record]] = [[], []]
    log = os.path.join(tmp, f"{kind}-{variant.replace(' ', '_')}.log")
    with server(argv, {**env, "FSB_MODEL": path}, log, ready):
        threads = [
            threading.Thread(target=_client, args=(port, count // 2, timeout, records[i]))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(count * timeout + 60)
    return _http_figures([r for per_thread in records for r in per_thread], count, ref)


def _http_figures(records: list[Record], count: int, ref: Any) -> dict[str, Any]:
    answers = [answer for _, _, answer in records if answer is not None]
    row: dict[str, Any] = {"requests": count, "answered": len(answers), **_loads(answers, ref)}
    if not answers:
        return row
    firsts: list[float] = []
    others: list[float] = []
    seen: set[int] = set()
    for _, seconds, answer in sorted(records, key=lambda r: r[0]):  # in the order sent
        if answer is None:
            continue
        (others if answer["pid"] in seen else firsts).append(seconds * 1e3)
        seen.add(answer["pid"])
    row["first_load_ms"] = {"median": statistics.median(firsts), "max": max(firsts)}
    row["p50_ms"] = statistics.median(others) if others else None
    row["slowest_other_ms"] = max(others) if others else None
    if others:
        row["ratio_slowest_to_first_load"] = max(others) / max(firsts)
    return row


VARIANTS = {
    "uwsgi": ("naive", "default", "shared", "lazy-apps"),
    "fastapi": ("naive", "default", "shared", "--preload off"),
    "recycling": ("default", "shared", "--preload off"),
}


def main(argv: list[str] | None = None) -> int:
    """Measure each server's variants; write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"recycle_after": RECYCLE_AFTER, "hang_s": HANG_S}
    with tempfile.TemporaryDirectory() as tmp:
        path = build_model(tmp)
        ref = _reference(path)
        if "rq" in args.only:
            report["rq"] = rq_section(path, args.jobs, args.rounds, tmp, ref)
        for kind in ("uwsgi", "fastapi", "recycling"):
            if kind in args.only:
                report[kind] = {
                    v: http_run(kind, v, path, args.requests, tmp, ref) for v in VARIANTS[kind]
                }
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# Report --------------------------------------------------------------------------------

_LABELS = {"rq": "RQ (preloading worker)", "uwsgi": "uWSGI preforking, 2 workers",
           "fastapi": "FastAPI, gunicorn -k uvicorn_worker.UvicornWorker -w 2",
           "recycling": "gunicorn -w 2 sync"}  # fmt: skip


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The servers' targets: RQ shared vs SimpleWorker; every request answered, none slower."""
    s = data
    rq = s.get("rq", {})
    rows = [
        target(
            "RQ horse per job, isolation='shared' / SimpleWorker, wall time per job",
            rq.get("ratio_shared_to_simple"),
            1.1,
            "",
            most=True,
        )
    ]
    for kind in ("uwsgi", "fastapi", "recycling"):
        # forksafe's own variants; the naive app and the bare-model workarounds are baselines.
        runs = {k: v for k, v in s.get(kind, {}).items() if k in ("default", "shared")}
        missed = sum(r["requests"] - r["answered"] for r in runs.values()) if runs else None
        rows.append(target(f"{_LABELS[kind]}: requests not answered", missed, 0, "", most=True))
        worst = [r.get("ratio_slowest_to_first_load") for r in runs.values()]
        value = max((w for w in worst if w is not None), default=None) if runs else None
        # A request queued behind a worker's load takes that load plus its own call.
        rows.append(
            target(f"{_LABELS[kind]}: slowest request / slowest first load", value, 1.05, "",
                    most=True)
        )  # fmt: skip
    return rows


def _cell(row: dict[str, Any], key: str, scale: float = 1.0, fmt: str = ".0f") -> str:
    value = row.get(key)
    return "-" if value is None else f"{value * scale:{fmt}}"


def render(data: dict[str, Any]) -> list[str]:
    """RESULTS.md's servers section (and what ``main`` prints)."""
    s = data
    out = ["", "## Servers and queues (`benchmarks/servers.py`)", ""]
    rq = s.get("rq")
    if rq:
        out += [
            f"RQ worker that preloads the job module; {rq['jobs']} jobs enqueued at once; wall "
            "time per job from the first enqueue to the last end (naive: 2 jobs, each killed at "
            f"`job_timeout` = {s['hang_s']:.0f} s). *Worker holds the host*: the worker made one "
            "call before working, so the host start and the load are outside the timed span; "
            "*horse only*: a job that does not use the model (RQ's own fork per job). "
            "shared / SimpleWorker: "
            f"{rq['ratio_shared_to_simple']:.2f} (median of rounds: "
            + ", ".join(f"{r:.2f}" for r in rq["ratios"])
            + ").",
            "",
            "| variant | answered | per job s | processes | loads per process | ran |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        names = ("naive", "default", "shared", "shared, worker holds the host", "SimpleWorker",
                 "horse only, no model")  # fmt: skip
        for name in (n for n in names if n in rq):
            row = rq[name]
            out.append(
                f"| {name} | {row['answered']}/{row['jobs']} | {_cell(row, 'per_job_s', fmt='.2f')}"
                f" | {row['processes'] or '-'} | {row['loads_per_process'] or '-'} | "
                f"{', '.join(row['in_effect']) or '-'} |"
            )
    for kind in ("uwsgi", "fastapi", "recycling"):
        runs = s.get(kind)
        if not runs:
            continue
        extra = f", `--max-requests {s['recycle_after']}`" if kind == "recycling" else ""
        out += [
            "",
            f"{_LABELS[kind]}{extra}: two clients, one request after another (naive: 2 "
            f"requests, {2 * s['hang_s']:.0f} s client timeout). *First load*: a worker's first "
            "request; *other*: the rest.",
            "",
            "| variant | answered | workers | loads per worker | first load ms (median, max) "
            "| other p50 ms | slowest other ms | slowest / first load |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in runs.items():
            first = row.get("first_load_ms")
            firsts = f"{first['median']:.0f}, {first['max']:.0f}" if first else "-"
            out.append(
                f"| {name} | {row['answered']}/{row['requests']} | {row['processes'] or '-'} | "
                f"{row['loads_per_process'] or '-'} | {firsts} | "
                f"{_cell(row, 'p50_ms', fmt='.1f')} | "
                f"{_cell(row, 'slowest_other_ms')} | "
                f"{_cell(row, 'ratio_slowest_to_first_load', fmt='.2f')} |"
            )
    return out
