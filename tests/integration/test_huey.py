"""A real huey consumer on Redis: process workers forked from a consumer that imported the app."""

from __future__ import annotations

from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import check_answers, redis_names
from tests.support.workers import worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]


def run_tasks(
    models: Models, tmp: Any, kind: str, tasks: int = 8, **env: str
) -> tuple[list[dict[str, Any]], int]:
    """Start ``huey_consumer -k KIND -w 2``, run ``tasks`` predictions; answers, consumer pid."""
    requires.package("huey")
    url = requires.redis_url()
    from tests.workers.huey_app import make

    x, _ = models.reference()
    with redis_names(url, "fs-huey") as name:
        environment = {"FS_BROKER": url, "FS_QUEUE": name, "FS_MODEL": models.keras, **env}
        args = ["huey.bin.huey_consumer", "tests.workers.huey_app.huey", "-k", kind, "-w", "2"]
        log = str(tmp / "huey.log")
        with worker_process(args, environment, log, "consumer started") as process:
            client, predict = make(name, url)
            pending = [predict(x.tolist()) for _ in range(tasks)]
            answers = [result.get(blocking=True, timeout=240) for result in pending]
            client.storage.conn.close()
        return answers, process.pid


@pytest.mark.support("huey", "-k process")
def test_process_workers_load_once_each(models: Models, tmp_path: Any) -> None:
    """-k process, untouched consumer: each worker loads once; the consumer never answers."""
    answers, consumer = run_tasks(models, tmp_path, "process")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and consumer not in per_pid


@pytest.mark.support("huey", "-k process", case="consumer ran TensorFlow")
def test_process_workers_when_the_consumer_ran_tensorflow(models: Models, tmp_path: Any) -> None:
    """-k process, the app ran TensorFlow in the consumer at import: workers use hosts."""
    answers, consumer = run_tasks(models, tmp_path, "process", FS_PARENT_RUNS_TF="1")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "process")
    assert len(per_pid) <= 2 and consumer not in per_pid
    assert len({answer["host_pid"] for answer in answers}) == len(per_pid)  # a host per worker


@pytest.mark.support("huey", "-k process", case='consumer ran TensorFlow, isolation="shared"')
def test_process_workers_share_one_host(models: Models, tmp_path: Any) -> None:
    """-k process with isolation='shared', consumer that ran TensorFlow: one host for all."""
    answers, _ = run_tasks(
        models, tmp_path, "process", FS_PARENT_RUNS_TF="1", FS_ISOLATION="shared"
    )
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1


@pytest.mark.support("huey", "-k thread", case="{poisoned?consumer ran TensorFlow}")
@pytest.mark.parametrize("poisoned", [False, True], ids=["untouched", "ran-tensorflow"])
def test_thread_workers_load_once_in_the_consumer(
    models: Models, tmp_path: Any, poisoned: bool
) -> None:
    """-k thread: the consumer itself answers, one load, whatever it ran at import."""
    extra = {"FS_PARENT_RUNS_TF": "1"} if poisoned else {}
    answers, consumer = run_tasks(models, tmp_path, "thread", **extra)
    _, reference = models.reference()
    assert check_answers(answers, reference, "inprocess") == {consumer: 8}
