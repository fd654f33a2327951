"""Worker recycling: gunicorn --max-requests and HUP, Celery --max-tasks-per-child 1.

Every replacement worker is forked from the same master, loads once, and
answers right; a fork per task is noticed and warned about once.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.procs import children_of
from tests.support.servers import check_answers, free_port, post_rows, redis_names
from tests.support.workers import celery_worker, worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]


def gunicorn(port: int, *extra: str) -> list[str]:
    """Two sync workers of the Flask app, preloaded, on ``port``."""
    return [
        "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--timeout", "120",
        "--preload", *extra, "tests.workers.flask_app:app",
    ]  # fmt: skip


@pytest.mark.support(
    "gunicorn", "sync workers", case="--max-requests{poisoned?, master ran TensorFlow}"
)
@pytest.mark.parametrize("poisoned", [False, True], ids=["untouched", "ran-tensorflow"])
def test_max_requests_replacements_load_once_each(
    models: Models, tmp_path: Any, poisoned: bool
) -> None:
    """--max-requests 2: 12 requests in a row reach 6 or more workers, each loading once."""
    requires.package("gunicorn")
    requires.package("flask")
    port = free_port()
    args = gunicorn(port, "--max-requests", "2", "--max-requests-jitter", "0")
    env = {"FS_MODEL": models.keras, **({"FS_PARENT_RUNS_TF": "1"} if poisoned else {})}
    x, reference = models.reference()
    with worker_process(args, env, str(tmp_path / "g.log"), "Booting worker") as master:
        answers = [post_rows(port, x.tolist()) for _ in range(12)]
    per_pid = check_answers(answers, reference, "process" if poisoned else "inprocess")
    assert len(per_pid) >= 6 and master.pid not in per_pid
    assert max(per_pid.values()) <= 2  # no worker outlived its two requests


@pytest.mark.support("gunicorn", "sync workers", case="HUP")
def test_hup_replaces_workers_that_load_once_each(models: Models, tmp_path: Any) -> None:
    """HUP: the master starts new workers (its own model still unloaded); they load once."""
    requires.package("gunicorn")
    requires.package("flask")
    port = free_port()
    x, reference = models.reference()
    env = {"FS_MODEL": models.keras}
    with worker_process(gunicorn(port), env, str(tmp_path / "g.log"), "Booting worker") as master:
        before = [post_rows(port, x.tolist()) for _ in range(4)]
        old = set(children_of(master.pid))
        os.kill(master.pid, signal.SIGHUP)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = set(children_of(master.pid))
            if len(now) == 2 and not now & old:
                break
            time.sleep(0.2)
        assert not set(children_of(master.pid)) & old, "HUP left the old workers running"
        after = [post_rows(port, x.tolist()) for _ in range(4)]
    first = check_answers(before, reference, "inprocess")
    second = check_answers(after, reference, "inprocess")
    assert not set(first) & set(second) and master.pid not in second


def celery_per_task(models: Models, tmp: Any, tasks: int, **env: str) -> tuple[list[Any], str]:
    """A prefork -c 2 worker with --max-tasks-per-child 1 on Redis; answers and its log."""
    requires.package("celery")
    url = requires.redis_url()
    from celery import Celery

    from tests.workers.celery_config import close_client, configure

    environment = {"FS_BROKER": url, "FS_BACKEND": url, "FS_MODEL": models.keras, **env}
    x, _ = models.reference()
    log = str(tmp / "worker.log")
    with redis_names(url, "fs-recycle") as queue:  # its kombu keys go with it
        args = celery_worker(
            "tests.workers.celery_app", "prefork", 2, queue, "--max-tasks-per-child", "1"
        )
        with worker_process(args, environment, log, "ready."):
            client = configure(Celery("forksafe_client"), environment)
            answers = []
            for _ in range(tasks):  # one at a time: each task a child of its own
                result = client.send_task("fs.predict", args=[x.tolist()], queue=queue)
                answers.append(result.get(timeout=240))
                result.forget()
            close_client(client)
    with open(log, encoding="utf-8", errors="replace") as f:
        return answers, f.read()


@pytest.mark.support("Celery", "-P prefork", case="--max-tasks-per-child 1; churn warned once")
def test_celery_child_per_task_loads_once_each_and_warns_once(
    models: Models, tmp_path: Any
) -> None:
    """--max-tasks-per-child 1: each task a new child, one load each; the churn warned once."""
    answers, log = celery_per_task(models, tmp_path, 6)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) == 6
    assert log.count("ForkSafeWarning") == 1, log[-3000:]
    assert "isolation='shared'" in log


@pytest.mark.support("Celery", "-P prefork", case='--max-tasks-per-child 1, isolation="shared"')
def test_celery_child_per_task_with_a_shared_host(models: Models, tmp_path: Any) -> None:
    """--max-tasks-per-child 1 and isolation='shared': six children, one host, no warning."""
    answers, log = celery_per_task(models, tmp_path, 6, FS_ISOLATION="shared")
    _, reference = models.reference()
    assert len(check_answers(answers, reference, "shared")) == 6
    assert len({answer["host_pid"] for answer in answers}) == 1
    assert "ForkSafeWarning" not in log


@pytest.mark.support("Celery", "-P prefork", case="--max-tasks-per-child 1, master ran TensorFlow")
def test_celery_child_per_task_when_the_master_ran_tensorflow(
    models: Models, tmp_path: Any
) -> None:
    """--max-tasks-per-child 1, master ran TensorFlow: every child answers through a host."""
    answers, _ = celery_per_task(models, tmp_path, 3, FS_PARENT_RUNS_TF="1")
    _, reference = models.reference()
    assert len(check_answers(answers, reference, "process")) == 3
