"""Dask distributed, started from the command line: a scheduler and two worker processes.

A driver in a fresh interpreter ships one proxy every way users do (task
arguments, a closure, ``scatter(broadcast=True)``, ``map_partitions``).
Each worker process loads once; the driver and the scheduler never load,
never import TensorFlow and, with ``isolation="process"``, never start a host.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.procs import children_of
from tests.support.workers import worker_process
from tests.workers.engines import check_run, imports_tensorflow, run_driver

pytestmark = pytest.mark.timeout(420)


def wait_for_file(path: str, timeout: float = 60.0) -> None:
    """Wait, bounded, until ``path`` exists and is not empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} was not written within {timeout} s")


@pytest.mark.support(
    "Dask", "dask scheduler, dask worker --nworkers 2", start="spawn", case="isolation={isolation}"
)
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_cli_scheduler_and_workers(models: Models, tmp_path: Any, isolation: str) -> None:
    """Right answers, one load per worker process, none in the driver or the scheduler."""
    requires.package("distributed")
    scheduler_file = str(tmp_path / "scheduler.json")
    load_log = str(tmp_path / "loads.log")
    scheduler_args = ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
    scheduler_args += ["--no-dashboard", "--scheduler-file", scheduler_file]
    worker_args = ["distributed.cli.dask_worker", "--scheduler-file", scheduler_file]
    worker_args += ["--host", "127.0.0.1", "--nworkers", "2", "--nthreads", "1"]
    worker_args += ["--no-dashboard", "--memory-limit", "0"]
    env = {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(__file__)))}
    with worker_process(
        scheduler_args, env, str(tmp_path / "scheduler.log"), "Scheduler at:"
    ) as scheduler:
        wait_for_file(scheduler_file)
        with worker_process(worker_args, env, str(tmp_path / "workers.log"), "Start worker"):
            result = run_driver(
                "dask_driver",
                [scheduler_file, models.keras, load_log, isolation],
                env,
                str(tmp_path / "driver.log"),
            )
            hosts_under_scheduler = children_of(scheduler.pid)
            scheduler_has_tf = imports_tensorflow(scheduler.pid)
    _, reference = models.reference()
    in_effect = "inprocess" if isolation == "auto" else "process"
    answered, loads = check_run(result, load_log, reference, in_effect)
    assert answered <= set(result["workers"])
    assert scheduler.pid not in loads and not scheduler_has_tf, "the scheduler loaded it"
    assert hosts_under_scheduler == [], "the scheduler started a model host"
    assert len(loads) == len(answered)  # one load per answering worker (or its host)
