"""gunicorn serving a Flask app over real HTTP on 127.0.0.1, hit with concurrent requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import free_port, post_rows
from tests.support.workers import runs_tensorflow, wait_until_warm, worker_process

pytestmark = pytest.mark.timeout(300)
requires.package("gunicorn")
requires.package("flask")


def serve(
    models: Models,
    tmp: Any,
    *,
    worker: str,
    preload: bool,
    requests: int = 24,
    extra: dict[str, str] | None = None,
    conf: bool = False,
) -> tuple[list[Any], int]:
    """Start gunicorn with 2 workers, send concurrent requests, return answers and its pid."""
    port = free_port()
    args = ["gunicorn", "-w", "2", "-k", worker, "-b", f"127.0.0.1:{port}", "--timeout", "120"]
    if worker == "gthread":
        args += ["--threads", "4"]
    if preload:
        args.append("--preload")
    args.append("tests.workers.flask_app:app")
    env = {"FS_MODEL": models.keras, **(extra or {})}
    x, _ = models.reference()
    with worker_process(args, env, str(tmp / "gunicorn.log"), "Booting worker") as process:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: post_rows(port, x.tolist()), range(requests)))
        return answers, process.pid


def check(answers: list[dict[str, Any]], models: Models, master: int) -> set[int]:
    """Right numbers, one load per worker, never answered by the master."""
    _, reference = models.reference()
    for answer in answers:
        np.testing.assert_allclose(np.asarray(answer["y"]), reference, atol=1e-5)
        assert answer["loads"] == 1
    pids = {answer["pid"] for answer in answers}
    assert master not in pids and len(pids) <= 2
    return pids


@pytest.mark.support("gunicorn", "{worker} workers", case="{preload?--preload}")
@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_workers_answer_right(models: Models, tmp_path: Any, worker: str, preload: bool) -> None:
    """sync and gthread workers, with and without --preload: one load per worker."""
    answers, master = serve(models, tmp_path, worker=worker, preload=preload)
    check(answers, models, master)
    assert {a["in_effect"] for a in answers} == {"inprocess"}


@pytest.mark.support("gunicorn", "gthread workers", case="--preload, master ran TensorFlow")
def test_preloaded_master_that_ran_tensorflow(models: Models, tmp_path: Any) -> None:
    """--preload with a warm-up predict at import: workers answer through hosts, not hang."""
    answers, master = serve(
        models, tmp_path, worker="gthread", preload=True, extra={"FS_PARENT_RUNS_TF": "1"}
    )
    check(answers, models, master)
    assert {a["in_effect"] for a in answers} == {"process"}


@pytest.mark.support("gunicorn", "sync workers", case="warm-up (forksafe.gunicorn.warm)")
def test_post_fork_warm_hook(models: Models, tmp_path: Any) -> None:
    """forksafe.gunicorn.warm in post_fork: workers load before any request, master never."""
    port = free_port()
    args = [
        "gunicorn",
        "-w",
        "2",
        "-k",
        "sync",
        "-b",
        f"127.0.0.1:{port}",
        "--preload",
        "-c",
        "tests/workers/gunicorn_conf.py",
        "tests.workers.flask_app:app",
    ]
    x, reference = models.reference()
    with worker_process(
        args, {"FS_MODEL": models.keras}, str(tmp_path / "g.log"), "Booting worker"
    ) as process:
        workers = wait_until_warm(process.pid, 2)
        assert len(workers) == 2 and all(runs_tensorflow(pid) for pid in workers)
        assert not runs_tensorflow(process.pid)
        answer = post_rows(port, x.tolist())
    np.testing.assert_allclose(np.asarray(answer["y"]), reference, atol=1e-5)
    assert answer["loads"] == 1
