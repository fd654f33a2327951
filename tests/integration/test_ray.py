"""Ray: a local cluster started from the command line, bound to 127.0.0.1 only.

A driver in a fresh interpreter ships one proxy every way users do (a task
argument, ``ray.put``, a closure, an actor, a Ray Data constructor
argument). Each worker process loads once; the driver never loads and never
imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
import uuid
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.procs import carrying
from tests.support.servers import free_port
from tests.support.workers import ROOT, worker_process
from tests.workers.engines import check_run, run_driver

pytestmark = pytest.mark.timeout(420)


def stopped(marker: str, timeout: float = 30.0) -> set[int]:
    """Wait, bounded, for the cluster's processes to exit; kill and return any left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and set(carrying(marker)):
        time.sleep(0.5)
    left = set(carrying(marker))
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.support("Ray", "ray start --head, tasks, actors, Ray Data")
def test_local_cluster(models: Models, tmp_path: Any) -> None:
    """Right answers, one load per worker process (tasks, actors, Ray Data), none in the driver."""
    requires.package("ray")
    port = free_port()
    load_log = str(tmp_path / "loads.log")
    # Ray's session directory holds Unix sockets: keep its path short.
    with tempfile.TemporaryDirectory(prefix="fsray") as temp:
        args = ["ray.scripts.scripts", "start", "--head", "--block"]
        args += ["--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2"]
        args += ["--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp]
        # Token authentication on, with a token of this test's own (not ~/.ray's).
        env = {"PYTHONPATH": ROOT, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
        env["RAY_AUTH_TOKEN"] = token = uuid.uuid4().hex
        try:
            with worker_process(args, env, str(tmp_path / "ray.log"), "Ray runtime started", 120):
                result = run_driver(
                    "ray_driver",
                    [f"127.0.0.1:{port}", models.keras, load_log],
                    env,
                    str(tmp_path / "driver.log"),
                )
        finally:
            left = stopped(f"RAY_AUTH_TOKEN={token}")
    assert not left, f"Ray processes outlived the cluster: {sorted(left)}"
    _, reference = models.reference()
    answered, loads = check_run(result, load_log, reference)
    assert set(loads) == answered  # and only processes that answered
