"""Reliability under load: fork storms, thread storms, kills, fuzzed files, a Celery soak.

Reduced counts by default (CI); ``nox -s stress`` sets FORKSAFE_STRESS=full. Each
test prints its figures (shown with ``-s``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.integration.test_celery import broker_env
from tests.models import Models
from tests.stress import scenarios
from tests.stress.scenarios import count
from tests.support.children import run_clean
from tests.support.fakes import HostProbe
from tests.support.procs import children_of, rss_kb, segments_back_to, shm_segments, wait_gone
from tests.support.workers import celery_worker, worker_process

pytestmark = [pytest.mark.stress, pytest.mark.timeout(1800)]


def report(name: str, figures: dict[str, Any]) -> None:
    """Print one test's figures as a JSON line."""
    print(f"\nSTRESS {name}: {json.dumps(figures, default=str)}")


def test_fork_storm(models: Models) -> None:
    """Children and grandchildren of a parent holding proxies: all right, none hangs."""
    result = run_clean(scenarios.fork_storm, models, timeout=3000).get()
    report("fork_storm", {k: v for k, v in result.items() if k != "outcomes"})
    assert result["hangs"] == 0
    assert result["right"] == result["tried"], result["wrong"]
    assert result["max_latency_s"] < 5.0


def test_fork_storm_after_the_parent_ran_tensorflow(models: Models) -> None:
    """Every child of a parent that ran TensorFlow refuses at once (inprocess)."""
    result = run_clean(scenarios.fork_storm_poisoned, models, timeout=3000).get()
    report("fork_storm_poisoned", result)
    assert result["hangs"] == 0
    assert result["refused"] == result["tried"]
    assert result["max_latency_s"] < 5.0


@pytest.mark.parametrize("fork_every", [0.0, 0.2], ids=["threads", "threads-and-forks"])
def test_thread_storm(models: Models, fork_every: float) -> None:
    """64 threads x 200 calls race the first load: one load, every answer right."""
    threads, calls = count(64, 16), count(200, 25)
    result = run_clean(
        scenarios.thread_storm, models, threads, calls, fork_every, timeout=1500
    ).get()
    report("thread_storm", result)
    assert result["loads"] == 1
    assert not result["wrong"]
    assert result["forks"]["hangs"] == 0 and result["forks"]["reused"] == 0
    assert (result["forks"]["tried"] >= 1) == bool(fork_every), result["forks"]


def test_fork_during_load(models: Models) -> None:
    """A fork while another thread is inside the load: the child answers or refuses."""
    result = run_clean(scenarios.fork_during_load, models, timeout=3000).get()
    report("fork_during_load", result)
    assert set(result["tally"]) <= {"answered", "refused"}, result["tally"]
    assert sum(result["tally"].values()) == result["tried"]


def test_host_kill_cycles() -> None:
    """SIGKILL the host during calls, again and again: each reported within 2 s, then healed."""
    before = shm_segments()
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    big = np.ones(2 * 1024 * 1024)
    cycles, slowest, killed = count(100, 10), 0.0, []
    for _ in range(cycles):
        pid = proxy.pid()
        killed.append(pid)
        timer = threading.Timer(0.1, os.kill, (pid, signal.SIGKILL))
        timer.start()
        start = time.monotonic()
        with pytest.raises(forksafe.HostCrashedError):
            proxy.hold(big, 5.0)
        slowest = max(slowest, time.monotonic() - start - 0.1)
        timer.join()
        assert proxy.value == 42
    leaked = [pid for pid in killed if not wait_gone(pid, 10)]
    left = segments_back_to(before)
    report(
        "host_kills",
        {
            "cycles": cycles,
            "slowest_report_s": slowest,
            "leaked_hosts": leaked,
            "leaked_segments": sorted(left),
        },
    )
    assert slowest < 2.0
    assert not leaked
    assert not left


@pytest.mark.parametrize(("fmt", "isolation"), [("keras", "inprocess"), ("h5", "process")])
def test_fuzzed_model_files(models: Models, tmp_path: Any, fmt: str, isolation: str) -> None:
    """Mutated model files: only documented outcomes, no hang, the caller survives.

    .h5 goes through a host: some corrupt HDF5 files make h5py spin forever in
    C code, which only a separate process can bound: a ``HostTimeoutError`` is
    accepted only for a file whose bare load (Keras, no forksafe) hangs too.
    """
    path = models.keras if fmt == "keras" else models.h5
    total = count(1000, 100) if fmt == "keras" else count(1000, 40)
    result = run_clean(
        scenarios.fuzz, path, f".{fmt}", str(tmp_path), 1234, total, isolation, timeout=3000
    ).get()
    report(f"fuzz_{fmt}", result)
    assert result["tried"] == total
    allowed = {"ModelLoadError", "loaded", "HostTimeoutError (bare load hangs)", "HostCrashedError"}
    assert set(result["outcomes"]) <= allowed, result["undocumented"]


def slope_kb_per_s(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over the second half of a child's life (KiB/s)."""
    t = np.array([s[0] for s in samples])
    kept = t >= t[0] + (t[-1] - t[0]) / 2
    if kept.sum() < 3:
        return 0.0
    r = np.array([s[1] for s in samples], dtype=float)[kept]
    return float(np.polyfit(t[kept] - t[kept][0], r, 1)[0])


def test_celery_soak_with_child_recycling(models: Models, tmp_path: Any) -> None:
    """Thousands of tasks on a prefork worker with --max-tasks-per-child: all right."""
    from celery import Celery

    from tests.workers.celery_config import close_client, configure

    env = {**broker_env("redis", str(tmp_path)), "FS_MODEL": models.keras}
    tasks, per_child = count(5000, 300), count(500, 100)
    queue = f"fs-soak-{uuid.uuid4().hex[:8]}"
    args = celery_worker(
        "tests.workers.celery_app", "prefork", 2, queue, f"--max-tasks-per-child={per_child}"
    )
    x, reference = models.reference()
    samples: dict[int, list[tuple[float, int]]] = {}
    stop = threading.Event()
    with worker_process(args, env, str(tmp_path / "soak.log"), "ready.") as process:

        def sample() -> None:
            while not stop.wait(0.25):
                for child in children_of(process.pid):
                    rss = rss_kb(child)
                    if rss is not None:
                        samples.setdefault(child, []).append((time.monotonic(), rss))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        client = configure(Celery("forksafe_soak"), env)
        start = time.monotonic()
        pending = [
            client.send_task("fs.predict", args=[x.tolist()], queue=queue) for _ in range(tasks)
        ]
        answers = [result.get(timeout=600) for result in pending]
        seconds = time.monotonic() - start
        stop.set()
        sampler.join(10)
        close_client(client)
    wrong = sum(1 for a in answers if not np.allclose(a["y"], reference, atol=1e-5))
    pids = {a["pid"] for a in answers}
    slopes = {pid: slope_kb_per_s(s) for pid, s in samples.items() if len(s) >= 6}
    report(
        "celery_soak",
        {
            "tasks": tasks,
            "per_child": per_child,
            "seconds": seconds,
            "tasks_per_s": tasks / seconds,
            "children": len(pids),
            "wrong": wrong,
            "max_rss_slope_kb_per_s": max(slopes.values(), default=0.0),
            "rss_kb_last": {p: s[-1][1] for p, s in samples.items()},
        },
    )
    assert wrong == 0
    assert all(a["loads"] == 1 for a in answers)
    assert len(pids) >= tasks // per_child  # children really were recycled
    # No growth across generations: every child ends within 5% of the others (a leak
    # in the parent, inherited by each fork, or in what the children share, shows
    # here). The slopes are reported, not asserted: at reduced counts a child lives
    # ~10 s and its RSS still climbs from TensorFlow's start through its whole life.
    last = [s[-1][1] for s in samples.values() if len(s) >= 6]
    assert len(last) >= 2 and max(last) <= 1.05 * min(last), last
