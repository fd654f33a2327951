"""FastAPI on gunicorn with uvicorn workers (and on uvicorn's own workers), over real HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import check_answers, free_port, post_rows
from tests.support.workers import worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]
APP = "tests.workers.fastapi_app:app"


def serve(
    models: Models, tmp: Any, server: list[str], requests: int = 16, **env: str
) -> tuple[list[dict[str, Any]], int]:
    """Start ``server`` on a free port; concurrent requests to both endpoints; answers, pid."""
    for name in ("fastapi", "uvicorn", "uvicorn_worker"):
        requires.package(name)
    port = free_port()
    args = [arg.replace("PORT", str(port)) for arg in server]
    x, _ = models.reference()
    log = str(tmp / "server.log")
    with worker_process(args, {"FS_MODEL": models.keras, **env}, log, "startup complete") as proc:
        paths = ["/predict", "/predict_sync"]
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: post_rows(port, x.tolist(), paths[i % 2]), range(requests))
            )
        return answers, proc.pid


def gunicorn(preload: bool) -> list[str]:
    """``gunicorn -k uvicorn_worker.UvicornWorker -w 2``, with ``--preload`` or not."""
    args = ["gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "2", "-b", "127.0.0.1:PORT"]
    return [*args, "--timeout", "120", *(["--preload"] if preload else []), APP]


@pytest.mark.support("FastAPI", "gunicorn uvicorn workers", case="{preload?--preload}")
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_uvicorn_workers_load_once_each(models: Models, tmp_path: Any, preload: bool) -> None:
    """Async and sync endpoints, two workers: one load per worker, none in the master."""
    answers, master = serve(models, tmp_path, gunicorn(preload))
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and master not in per_pid


@pytest.mark.support("FastAPI", "gunicorn uvicorn workers", case="--preload, master ran TensorFlow")
def test_preloaded_master_that_ran_tensorflow(models: Models, tmp_path: Any) -> None:
    """--preload, and the app ran TensorFlow at import in the master: workers use hosts."""
    answers, master = serve(models, tmp_path, gunicorn(True), FS_PARENT_RUNS_TF="1")
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "process")
    assert len(per_pid) <= 2 and master not in per_pid
    assert len({answer["host_pid"] for answer in answers}) == len(per_pid)


@pytest.mark.support(
    "FastAPI",
    "gunicorn uvicorn workers",
    case='--preload, master ran TensorFlow, isolation="shared"',
)
def test_preloaded_master_that_ran_tensorflow_shared(models: Models, tmp_path: Any) -> None:
    """Same master, isolation='shared': every worker's requests go to one host."""
    answers, _ = serve(
        models, tmp_path, gunicorn(True), FS_PARENT_RUNS_TF="1", FS_ISOLATION="shared"
    )
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1


@pytest.mark.support("FastAPI", "uvicorn --workers", start="spawn")
def test_uvicorn_own_workers(models: Models, tmp_path: Any) -> None:
    """``uvicorn --workers 2`` (spawned workers): one load per worker."""
    server = ["uvicorn", APP, "--host", "127.0.0.1", "--port", "PORT", "--workers", "2"]
    answers, supervisor = serve(models, tmp_path, server)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and supervisor not in per_pid
