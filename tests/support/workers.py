"""Start a real worker subprocess (Celery, gunicorn), bounded, and always clean it up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.procs import children_of, stop_group

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for_text(path: str, text: str, timeout: float, process: subprocess.Popen[bytes]) -> None:
    """Wait, bounded, until ``text`` appears in the log at ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as f:
            if text in f.read():
                return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    with open(path, encoding="utf-8", errors="replace") as f:
        log = f.read()[-4000:]
    raise AssertionError(f"{text!r} not seen within {timeout} s (exit {process.poll()}):\n{log}")


@contextmanager
def worker_process(
    args: list[str],
    env: dict[str, str],
    log: str,
    ready: str,
    timeout: float = 90.0,
    cwd: str = ROOT,
    program: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m <args>`` (or ``program <args>``) in its own process group until the end."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [program, *args] if program else [sys.executable, "-m", *args],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_text(log, ready, timeout, process)
        yield process
    finally:
        stop_group(process)


def celery_worker(
    app: str, pool: str, concurrency: int, queue: str | None = None, *extra: str
) -> list[str]:
    """``python -m`` arguments of a quiet Celery worker (no gossip, mingle, heartbeat)."""
    args = ["celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency)]
    if queue is not None:
        args += ["-Q", queue, "-n", f"{queue}@%h"]
    return [
        *args,
        *extra,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "--loglevel=INFO",
    ]


def wait_until_warm(parent: int, workers: int, timeout: float = 90.0) -> list[int]:
    """Wait, bounded, until ``workers`` children of ``parent`` have started TensorFlow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = children_of(parent)
        if len(children) == workers and all(runs_tensorflow(pid) for pid in children):
            break
        time.sleep(0.5)
    return children_of(parent)


def runs_tensorflow(pid: int) -> bool:
    """Whether ``pid`` has TensorFlow's native pool threads (its runtime is started)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8") as f:
                if f.read().startswith("tf_"):
                    return True
        except OSError:
            continue
    return False
