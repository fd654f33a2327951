"""A real dramatiq worker on Redis: worker processes with threads, each importing the app."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import check_answers, redis_names
from tests.support.workers import worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]


def run_messages(
    models: Models, tmp: Any, *cli: str, messages: int = 8, **env: str
) -> tuple[list[dict[str, Any]], int]:
    """Start ``dramatiq`` with 2 processes of 2 threads, send predictions; answers, its pid."""
    requires.package("dramatiq")
    url = requires.redis_url()
    from tests.workers.dramatiq_app import make

    x, _ = models.reference()
    with redis_names(url, "fs-dramatiq") as name:
        environment = {"FS_BROKER": url, "FS_QUEUE": name, "FS_MODEL": models.keras, **env}
        args = ["dramatiq", "tests.workers.dramatiq_app:broker", "-p", "2", "-t", "2", *cli]
        log = str(tmp / "dramatiq.log")
        with worker_process(args, environment, log, "ready for action") as process:
            broker, backend, actor = make(name, url)
            pending = [actor.send(x.tolist()) for _ in range(messages)]
            answers = [result_of(message, backend, 240) for message in pending]
            for client in (broker.client, backend.client):
                client.connection_pool.disconnect()  # not left to the collector
        return answers, process.pid


def result_of(message: Any, backend: Any, timeout: float) -> dict[str, Any]:
    """The message's result, waited for (bounded) in blocks shorter than Redis' timeout."""
    from dramatiq.results import ResultTimeout

    deadline = time.monotonic() + timeout
    while True:
        try:
            return message.get_result(backend=backend, block=True, timeout=2000)  # type: ignore[no-any-return]
        except ResultTimeout:
            if time.monotonic() > deadline:
                raise


@pytest.mark.support("dramatiq", "processes with threads")
def test_worker_processes_load_once_each(models: Models, tmp_path: Any) -> None:
    """Two processes, two threads each: one load per process, never in the main process."""
    answers, main = run_messages(models, tmp_path)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and main not in per_pid


@pytest.mark.support("dramatiq", "processes with threads", case="app ran TensorFlow at import")
def test_app_that_runs_tensorflow_at_import(models: Models, tmp_path: Any) -> None:
    """The app runs TensorFlow at import: in each worker process itself, so in-process still.

    dramatiq's main process never imports the app; each worker imports it after the fork.
    """
    answers, main = run_messages(models, tmp_path, FS_PARENT_RUNS_TF="1")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert main not in per_pid


@pytest.mark.support("dramatiq", "processes with threads", case='isolation="shared"')
def test_shared_host_for_every_worker_process(models: Models, tmp_path: Any) -> None:
    """isolation='shared': both worker processes answer through one host."""
    answers, _ = run_messages(models, tmp_path, FS_ISOLATION="shared")
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1


@pytest.mark.support("dramatiq", "processes with threads", start="spawn")
def test_spawned_worker_processes(models: Models, tmp_path: Any) -> None:
    """--use-spawn: worker processes are fresh interpreters; one load each."""
    answers, main = run_messages(models, tmp_path, "--use-spawn")
    _, reference = models.reference()
    assert main not in check_answers(answers, reference, "inprocess")
