"""Every example runs, end to end, so none of them rots."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests.integration.test_celery import REDIS_URL, reachable
from tests.integration.test_gunicorn import free_port, post
from tests.models import Models
from tests.workers.harness import ROOT, celery_worker, worker_process

pytestmark = pytest.mark.timeout(300)
EXAMPLES = os.path.join(ROOT, "examples")


def redis_or_skip() -> str:
    """The Redis URL, or skip (fail under CI=true) when no Redis answers."""
    if not reachable(REDIS_URL):
        if os.environ.get("CI") == "true":
            pytest.fail(f"redis not reachable at {REDIS_URL} (CI=true)")
        pytest.skip(f"redis not reachable at {REDIS_URL}")
    return REDIS_URL


def run_script(name: str, models: Models) -> str:
    """Run an example script with the test model; return its output."""
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
        env={**os.environ, "MODEL_PATH": models.keras},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_multiprocessing_pool_example(models: Models) -> None:
    """Six predictions from two workers, each of which loaded once."""
    lines = re.findall(
        r"worker (\d+): loads=(\d+) sum=", run_script("multiprocessing_pool.py", models)
    )
    assert len(lines) == 6
    assert {loads for _, loads in lines} == {"1"}
    assert len({pid for pid, _ in lines}) <= 2


def test_dask_example(models: Models) -> None:
    """Passed with every task or scattered: each worker loads once, the client never."""
    pytest.importorskip("distributed", reason="dask.distributed is not installed")
    output = run_script("dask_cluster.py", models)
    lines = re.findall(r"(passed|scattered): worker (\d+): loads=(\d+) sum=", output)
    assert sorted({way for way, _, _ in lines}) == ["passed", "scattered"]
    assert len(lines) == 12
    assert {loads for _, _, loads in lines} == {"1"}
    assert len({pid for _, pid, _ in lines}) <= 2
    assert "client loaded: False" in output


def test_ray_example(models: Models) -> None:
    """Tasks, an actor and Ray Data: every worker loaded once, the driver never."""
    pytest.importorskip("ray", reason="ray is not installed")
    output = run_script("ray_tasks.py", models)
    lines = re.findall(r"(task|actor|ray data): worker (\d+): loads=(\d+)", output)
    assert sorted({way for way, _, _ in lines}) == ["actor", "ray data", "task"]
    assert {loads for _, _, loads in lines} == {"1"}
    assert "driver loaded: False" in output


def test_spark_example(models: Models) -> None:
    """mapInPandas and a pandas_udf: every Python worker loaded once, the driver never."""
    pytest.importorskip("pyspark", reason="pyspark is not installed")
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    output = run_script("spark_partitions.py", models)
    lines = re.findall(r"mapInPandas: worker (\d+): loads=(\d+)", output)
    assert len(lines) == 4 and {loads for _, loads in lines} == {"1"}
    assert "pandas_udf: loads=[1]" in output
    assert "driver loaded: False" in output


def test_make_model(tmp_path: Any) -> None:
    """make_model.py writes a model that loads."""
    target = tmp_path / "m.keras"
    done = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "make_model.py"), str(target)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.stat().st_size > 0


def test_celery_redis_example(models: Models, tmp_path: Any) -> None:
    """The original report's stack: a prefork worker on Redis answers send.py."""
    env = {"BROKER_URL": redis_or_skip(), "MODEL_PATH": models.keras}
    cwd = os.path.join(EXAMPLES, "celery_redis")
    args = celery_worker("tasks", "prefork", 2)
    with worker_process(args, env, str(tmp_path / "w.log"), "ready.", cwd=cwd):
        done = subprocess.run(
            [sys.executable, "send.py"],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            cwd=cwd,
            env={**os.environ, **env},
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(re.findall(r"worker \d+: \[\[", done.stdout)) == 4


def test_gunicorn_flask_example(models: Models, tmp_path: Any) -> None:
    """gunicorn with the example's config answers over HTTP."""
    port = free_port()
    args = ["gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "app:app"]
    with worker_process(
        args,
        {"MODEL_PATH": models.keras},
        str(tmp_path / "g.log"),
        "Booting worker",
        cwd=os.path.join(EXAMPLES, "gunicorn_flask"),
    ):
        answer = post(port, [[0.1, 0.2, 0.3, 0.4]])
    assert len(answer["y"]) == 1 and len(answer["y"][0]) == 3


@pytest.mark.support("Django + Celery", "-P prefork", case="examples/django_celery")
def test_django_celery_example(models: Models, tmp_path: Any) -> None:
    """A Django view enqueues a prediction that a Celery prefork worker answers."""
    pytest.importorskip("django", reason="django is not installed")
    env = {"BROKER_URL": redis_or_skip(), "MODEL_PATH": models.keras}
    cwd = os.path.join(EXAMPLES, "django_celery")
    port = free_port()
    worker = celery_worker("mysite", "prefork", 2)
    server = ["django", "runserver", f"127.0.0.1:{port}", "--noreload"]
    env_server = {**env, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    with (
        worker_process(worker, env, str(tmp_path / "w.log"), "ready.", cwd=cwd),
        worker_process(server, env_server, str(tmp_path / "d.log"), "Quit the server", cwd=cwd),
    ):
        body = post_path(port, "/predict/", {"rows": [[0.1, 0.2, 0.3, 0.4]]})
    assert len(body["y"][0]) == 3


def post_path(port: int, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """POST JSON to a path, bounded."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


@pytest.mark.support("RQ", "Worker (a horse per job)", case="examples/rq_worker")
def test_rq_worker_example(models: Models, tmp_path: Any) -> None:
    """RQ, a horse per job: four horses answer through one shared host, right by value."""
    from tests.models import numpy_forward
    from tests.support import requires
    from tests.support.servers import redis_names

    requires.package("rq")
    url = requires.redis_url()
    cwd = os.path.join(EXAMPLES, "rq_worker")
    with redis_names(url, "fs-example-rq") as queue:
        env = {"REDIS_URL": url, "RQ_QUEUE": queue, "MODEL_PATH": models.keras}
        with worker_process(["worker"], env, str(tmp_path / "w.log"), "worker ready", cwd=cwd):
            done = subprocess.run(
                [sys.executable, "enqueue.py"],
                capture_output=True,
                text=True,
                timeout=360,
                check=False,
                cwd=cwd,
                env={**os.environ, **env},
            )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = re.findall(r"horse (\d+) host (\d+): (\[\[.*\]\])", done.stdout)
    assert len(lines) == 4 and len({horse for horse, _, _ in lines}) == 4, done.stdout
    assert len({host for _, host, _ in lines}) == 1
    expected = numpy_forward(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"))
    for _, _, y in lines:
        np.testing.assert_allclose(np.array(ast.literal_eval(y)), expected, atol=1e-5)
