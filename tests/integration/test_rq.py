"""A real RQ worker on Redis that preloads its job module and forks a work horse per job."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import check_answers, redis_names
from tests.support.workers import runs_tensorflow, worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]


def run_jobs(
    models: Models, tmp: Any, jobs: int, *, simple: bool = False, gap: float = 0.0, **env: str
) -> tuple[list[dict[str, Any]], int, str]:
    """Start the preloading worker, run ``jobs`` predictions; answers, worker pid, its log."""
    requires.package("rq")
    url = requires.redis_url()
    from redis import Redis
    from rq import Queue

    x, _ = models.reference()
    log = str(tmp / "rq.log")
    with redis_names(url, "fs-rq") as name:
        environment = {
            "FS_BROKER": url,
            "FS_QUEUE": name,
            "FS_MODEL": models.keras,
            "FS_RQ_WORKER": "simple" if simple else "fork",
            **env,
        }
        with worker_process(["tests.workers.rq_worker"], environment, log, "ready") as process:
            connection = Redis.from_url(url)
            queue = Queue(name, connection=connection)
            answers, pending = [], []
            for index in range(jobs):
                job = queue.enqueue(
                    "tests.workers.rq_jobs.predict",
                    x.tolist(),
                    job_id=f"{name}-{index}",
                    job_timeout=180,
                    result_ttl=600,
                )
                if gap:  # one job at a time, this long apart
                    answers.append(wait_for(job, 300))
                    time.sleep(gap)
                else:
                    pending.append(job)
            answers += [wait_for(job, 300) for job in pending]
            worker_ran_tensorflow = runs_tensorflow(process.pid)
            connection.close()
        assert not worker_ran_tensorflow or simple or env.get("FS_PARENT_RUNS_TF")
        with open(log, encoding="utf-8", errors="replace") as f:
            return answers, process.pid, f.read()


def wait_for(job: Any, timeout: float) -> dict[str, Any]:
    """The job's return value, waiting (bounded) until it finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job.get_status(refresh=True)
        if status == "finished":
            return job.return_value()  # type: ignore[no-any-return]
        if status in ("failed", "stopped", "canceled"):
            raise AssertionError(f"job {job.id} {status}: {job.latest_result()}")
        time.sleep(0.1)
    raise AssertionError(f"job {job.id} not finished within {timeout} s")


@pytest.mark.support("RQ", "Worker (a horse per job)", case="preloaded module; churn warned once")
def test_a_horse_per_job_loads_once_each_and_warns_about_the_churn(
    models: Models, tmp_path: Any
) -> None:
    """Default isolation, untouched worker: every horse loads once; the fifth warns, once."""
    answers, worker, log = run_jobs(models, tmp_path, 6)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) == 6 and worker not in per_pid  # a new horse for every job
    assert log.count("ForkSafeWarning") == 1, log[-3000:]
    assert "isolation='shared'" in log


@pytest.mark.support("RQ", "Worker (a horse per job)", case='isolation="shared"')
def test_shared_host_serves_every_horse_with_one_load(models: Models, tmp_path: Any) -> None:
    """isolation='shared': six horses, one host (one load); no horse imports TensorFlow."""
    answers, worker, log = run_jobs(models, tmp_path, 6, FS_ISOLATION="shared")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "shared")
    assert len(per_pid) == 6 and worker not in per_pid
    assert len({answer["host_pid"] for answer in answers}) == 1
    assert "ForkSafeWarning" not in log  # nothing loaded in a horse


@pytest.mark.support("RQ", "SimpleWorker")
def test_simple_worker_loads_once_in_the_worker(models: Models, tmp_path: Any) -> None:
    """SimpleWorker runs every job in the worker itself: one process, one load."""
    answers, worker, _ = run_jobs(models, tmp_path, 4, simple=True)
    _, reference = models.reference()
    assert check_answers(answers, reference, "inprocess") == {worker: 4}


@pytest.mark.support("RQ", "Worker (a horse per job)", case="worker ran TensorFlow")
def test_worker_that_ran_tensorflow_at_import(models: Models, tmp_path: Any) -> None:
    """The preloaded module ran TensorFlow in the worker: each horse answers through a host."""
    answers, worker, _ = run_jobs(models, tmp_path, 3, FS_PARENT_RUNS_TF="1")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "process")
    assert len(per_pid) == 3 and worker not in per_pid
    hosts = {answer["host_pid"] for answer in answers}
    assert len(hosts) == 3 and not hosts & set(per_pid)  # a host of its own per horse


@pytest.mark.support(
    "RQ", "Worker (a horse per job)", case='worker ran TensorFlow, isolation="shared"'
)
def test_shared_host_when_the_worker_ran_tensorflow(models: Models, tmp_path: Any) -> None:
    """Poisoned worker and isolation='shared': every horse answers through one host."""
    answers, _, _ = run_jobs(models, tmp_path, 3, FS_PARENT_RUNS_TF="1", FS_ISOLATION="shared")
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1


@pytest.mark.support("RQ", "Worker (a horse per job)", case="the worker holds the shared host")
def test_worker_holding_a_shared_host_keeps_it_between_sparse_jobs(
    models: Models, tmp_path: Any
) -> None:
    """One call in the worker before work(): jobs further apart than the host's grace share it.

    The worker itself never imports TensorFlow (the host holds the model).
    """
    answers, worker, _ = run_jobs(
        models, tmp_path, 2, gap=13.0, FS_ISOLATION="shared", FS_RQ_HOLD="1"
    )
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "shared")
    assert len(per_pid) == 2 and worker not in per_pid
    assert len({answer["host_pid"] for answer in answers}) == 1
