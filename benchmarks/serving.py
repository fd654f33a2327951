"""Pools of workers serving ``benchmarks/shared_app.py``, and the clients that load them.

A pool is a real ``celery worker -P prefork`` on Redis or a real ``gunicorn``
with sync workers on 127.0.0.1, started in a session of its own with an
environment marker that every process it starts inherits (also a shared
host: a worker starts it with ``subprocess.Popen``, which passes the
environment on). The clients keep a bounded number of requests in flight.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import stop_marked
from benchmarks.celery_pools import REDIS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Pool:
    """A running pool: its kind, master, where to send requests, its marker and log."""

    kind: str
    master: int
    target: str  # the Celery queue, or the HTTP port
    marker: str
    log: str


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def pool(
    kind: str, workers: int, env: dict[str, str], log: str, app: str = "benchmarks.shared_app"
) -> Iterator[Pool]:
    """Start a pool of ``kind`` serving module ``app``; stop it and its shared host after."""
    marker = f"forksafe-bench-{uuid.uuid4().hex}"
    if kind == "celery":
        target = f"shared-{uuid.uuid4().hex[:8]}"
        args = [
            "celery", "-A", app, "worker", "-P", "prefork",
            "-c", str(workers), "-Q", target, "-n", f"{target}@%h", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "--loglevel=WARNING",
        ]  # fmt: skip
    else:
        target = str(free_port())
        args = [
            "gunicorn", "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{target}",
            "--timeout", "300", f"{app}:app",
        ]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env={**os.environ, **env, "FSB_SERVER": kind, "FSB_BROKER": REDIS,
                 "FSB_MARKER": marker},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield Pool(kind, process.pid, target, f"FSB_MARKER={marker}", log)
    finally:
        stop_marked(process, f"FSB_MARKER={marker}", 30)


def _post(conn: http.client.HTTPConnection, body: bytes) -> Any:
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
    return json.loads(data)


_CLIENT: list[Any] = []


def _celery_client() -> Any:
    """This process's Celery client app (one, reused by every pool)."""
    if not _CLIENT:
        from celery import Celery

        app = Celery("forksafe_bench_shared_client", broker=REDIS, backend=REDIS)
        app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
        _CLIENT.append(app)
    return _CLIENT[0]


Record = tuple[float, float, Any]  # sent, answered (time.time()), the answer


def _drive_http(port: int, payloads: list[Any], clients: int, seconds: float) -> list[Record]:
    """``clients`` threads, each posting one request after another, for ``seconds``."""
    stop_at = time.time() + seconds
    bodies = [json.dumps({"rows": rows}).encode() for rows in payloads]
    records: list[list[Record]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def client(index: int) -> None:
        # sync workers close the connection after each answer; it reopens itself.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            k = index
            while time.time() < stop_at:
                sent = time.time()
                answer = _post(conn, bodies[k % len(bodies)])
                records[index].append((sent, time.time(), answer))
                k += clients
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 300)
    if errors:
        raise errors[0]
    return [r for per_client in records for r in per_client]


def _drive_celery(queue: str, payloads: list[Any], window: int, seconds: float) -> list[Record]:
    """A window of ``window`` tasks in flight for ``seconds``, refilled as the oldest finishes.

    The answered time is the task's own finish stamp: waiting on the oldest
    (one thread, as Celery's result consumer wants) then costs the latency
    nothing, only a moment of the window when tasks finish out of order.
    """
    stop_at = time.time() + seconds
    app = _celery_client()
    in_flight: collections.deque[tuple[float, Any]] = collections.deque()
    done = []
    k = 0
    while True:
        while time.time() < stop_at and len(in_flight) < window:
            sent = time.time()
            payload = payloads[k % len(payloads)]
            in_flight.append((sent, app.send_task("bench.shared_predict", (payload,), queue=queue)))
            k += 1
        if not in_flight:
            return done
        sent, task = in_flight.popleft()
        answer = task.get(timeout=300)
        done.append((sent, answer["done_at"], answer))


def drive(pool: Pool, payloads: list[Any], clients: int, seconds: float) -> list[Record]:
    """A closed loop of ``clients`` requests in flight on ``pool`` for ``seconds``."""
    if pool.kind == "gunicorn":
        return _drive_http(int(pool.target), payloads, clients, seconds)
    return _drive_celery(pool.target, payloads, clients, seconds)


def warm(pool: Pool, payloads: list[Any], workers: int) -> list[Any]:
    """Requests until every worker has answered (each loads its model); their answers."""
    answers: list[Any] = []
    deadline = time.monotonic() + 600
    while len({a["pid"] for a in answers}) < workers:
        if time.monotonic() > deadline:
            with open(pool.log, encoding="utf-8", errors="replace") as f:
                raise RuntimeError(f"not every worker answered:\n{f.read()[-3000:]}")
        try:
            answers += [r[2] for r in drive(pool, payloads, 2 * workers, 0.5)]
        except (OSError, http.client.HTTPException):  # gunicorn not listening yet
            time.sleep(0.5)
    return answers


def memory_mb(pid: int) -> tuple[float, float]:
    """PSS and USS (private pages) of ``pid``, MB."""
    pss = uss = 0
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                uss += int(line.split()[1])
    return pss / 1024, uss / 1024


def payloads(rows: int, count: int = 64) -> list[list[list[float]]]:
    """``count`` requests of ``rows`` rows of 64 features; the same for every configuration."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((rows, 64)).round(4).tolist() for _ in range(count)]


def loaded(pool: Pool, requests: list[Any], clients: int, warm: float, seconds: float) -> Any:
    """Load ``pool`` for ``warm`` then ``seconds``: its figures over ``seconds``, and records.

    Requests/s counts answers within the measured span; latencies are those
    of the requests sent within it (send → answer).
    """
    start = time.time()
    records = drive(pool, requests, clients, warm + seconds)
    begin, end = start + warm, start + warm + seconds
    ms = np.asarray(
        [(answered - sent) * 1e3 for sent, answered, _ in records if begin <= sent <= end]
    )
    figures = {
        "requests_per_s": sum(begin <= answered <= end for _, answered, _ in records) / seconds,
        "latency_ms": {
            "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max()),
        },
        "requests": len(ms),
    }
    return figures, records
