"""Every example runs, end to end, so none of them rots, and prints the right figures.

Each figure an example prints (a sum, an answer) is compared to a reference
computed with numpy alone from the test model's weights (``numpy_forward``):
no forksafe, no Keras. The quickstart runs exactly as the README runs it.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests.models import Models, numpy_forward, tiny_forward, tiny_weights
from tests.support import requires
from tests.support.children import run_clean
from tests.support.servers import free_port, post_rows
from tests.support.workers import ROOT, celery_worker, worker_process

pytestmark = pytest.mark.timeout(300)
EXAMPLES = os.path.join(ROOT, "examples")


def run_script(name: str, models: Models) -> str:
    """Run an example script with the test model; return its output."""
    return run_example([os.path.join(EXAMPLES, name)], ROOT, {"MODEL_PATH": models.keras})


def run_example(
    args: list[str], cwd: str, env: dict[str, str], timeout: float = 240, drop: tuple[str, ...] = ()
) -> str:
    """``python ARGS`` from ``cwd`` with ``env`` added (``drop`` removed), bounded; its stdout.

    Fails the test, with both outputs, when it exits non-zero.
    """
    base = {k: v for k, v in os.environ.items() if k not in drop}
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**base, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def seeded_sum(seed: int) -> float:
    """The sum an example prints for ``default_rng(seed)``'s (8, 4) batch, by numpy alone."""
    x = np.random.default_rng(seed).standard_normal((8, 4)).astype("float32")
    return float(numpy_forward(x).sum())


def check_sums(printed: list[str], expected: list[float]) -> None:
    """Printed sums (4 decimals) equal the references, in order."""
    assert len(printed) == len(expected), printed
    np.testing.assert_allclose([float(s) for s in printed], expected, atol=1e-3)


def test_multiprocessing_pool_example(models: Models) -> None:
    """Six predictions from two workers, each of which loaded once; each sum right."""
    lines = re.findall(
        r"worker (\d+): loads=(\d+) sum=(\S+)", run_script("multiprocessing_pool.py", models)
    )
    assert len(lines) == 6
    assert {loads for _, loads, _ in lines} == {"1"}
    assert len({pid for pid, _, _ in lines}) <= 2
    check_sums([total for _, _, total in lines], [seeded_sum(seed) for seed in range(6)])


def test_quickstart_as_the_readme_runs_it() -> None:
    """``python examples/quickstart.py`` from the repository root, nothing else set.

    Its model is forksafe.testing's tiny model (seed 0): every worker, the
    parent and the hosted worker print the sum numpy computes from those
    weights for the quickstart's batch; each worker loaded once; the
    inprocess worker refuses with the documented error.
    """
    out = run_example(
        ["examples/quickstart.py"], ROOT, {}, drop=("MODEL_PATH", "FORKSAFE_ISOLATION")
    )
    workers = re.findall(r"worker (\d+): model loads in this worker = (\d+), sum\(y\) = (\S+)", out)
    assert len(workers) == 4 and {loads for _, loads, _ in workers} == {"1"}, out
    parent = re.findall(r"parent predicts too: sum\(y\) = (\S+)", out)
    hosted = re.findall(r"answered through a model host, sum\(y\) = (\S+)", out)
    assert len(parent) == 1 and len(hosted) == 1, out
    x = np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(8, 4)  # the quickstart's X
    expected = float(tiny_forward(x, tiny_weights(4, 3, (8,), 0)).sum())
    check_sums([total for _, _, total in workers] + parent + hosted, [expected] * 6)
    # The documented refusal (InheritedRuntimeError's message names the parent that ran it).
    assert re.search(r"refuses at once:\n  .*parent process \d+", out), out


def test_dask_example(models: Models) -> None:
    """Passed with every task or scattered: each worker loads once, the client never."""
    requires.package("distributed")
    output = run_script("dask_cluster.py", models)
    lines = re.findall(r"(passed|scattered): worker (\d+): loads=(\d+) sum=(\S+)", output)
    assert sorted({way for way, _, _, _ in lines}) == ["passed", "scattered"]
    assert len(lines) == 12
    assert {loads for _, _, loads, _ in lines} == {"1"}
    assert len({pid for _, pid, _, _ in lines}) <= 2
    for way in ("passed", "scattered"):
        printed = [total for w, _, _, total in lines if w == way]
        check_sums(printed, [seeded_sum(seed) for seed in range(6)])
    assert "client loaded: False" in output


def test_ray_example(models: Models) -> None:
    """Tasks, an actor and Ray Data: every worker loaded once, the driver never."""
    requires.package("ray")
    output = run_script("ray_tasks.py", models)
    lines = re.findall(r"(task|actor|ray data): worker (\d+): loads=(\d+)", output)
    assert sorted({way for way, _, _ in lines}) == ["actor", "ray data", "task"]
    assert {loads for _, _, loads in lines} == {"1"}
    sums = re.findall(r"(?:task|actor): worker \d+: loads=\d+ sum=(\S+)", output)
    check_sums(sums, [seeded_sum(0)] * 6)  # four tasks, two actor calls: all on seed 0's batch
    assert "driver loaded: False" in output


def test_spark_example(models: Models) -> None:
    """mapInPandas and a pandas_udf: every Python worker loaded once, the driver never."""
    requires.package("pyspark")
    requires.package("pyarrow")
    output = run_script("spark_partitions.py", models)
    lines = re.findall(r"mapInPandas: worker (\d+): loads=(\d+)", output)
    assert len(lines) == 4 and {loads for _, loads in lines} == {"1"}
    assert "pandas_udf: loads=[1]" in output
    assert "driver loaded: False" in output


def test_make_model(tmp_path: Any) -> None:
    """make_model.py writes a model that loads."""
    target = tmp_path / "m.keras"
    run_example([os.path.join(EXAMPLES, "make_model.py"), str(target)], str(tmp_path), {})
    # It loads: Keras' own load (a clean process, no forksafe) and the proxy agree by value.
    x, bare, proxied = run_clean(_both_loads, str(target), spawn=True, timeout=240).get()
    # make_model.py saves forksafe.testing's tiny model, seed 0: its figures by numpy alone.
    np.testing.assert_allclose(bare, tiny_forward(x, tiny_weights(4, 3, (8,), 0)), atol=1e-5)
    np.testing.assert_allclose(proxied, bare, atol=1e-6)


def _both_loads(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras' load and a forksafe proxy's of ``path``: their predictions for one batch."""
    import keras

    import forksafe

    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    bare = np.asarray(keras.models.load_model(path).predict_on_batch(x))
    proxied = forksafe.load_model(path, isolation="inprocess").predict_on_batch(x)
    return x, bare, np.asarray(proxied)


def test_celery_redis_example(models: Models, tmp_path: Any) -> None:
    """The original report's stack: a prefork worker on Redis answers send.py."""
    env = {"BROKER_URL": requires.redis_url(), "MODEL_PATH": models.keras}
    cwd = os.path.join(EXAMPLES, "celery_redis")
    args = celery_worker("tasks", "prefork", 2)
    with worker_process(args, env, str(tmp_path / "w.log"), "ready.", cwd=cwd):
        out = run_example(["send.py"], cwd, env, timeout=180)
    answers = re.findall(r"worker \d+: (\[\[.*\]\])", out)
    assert len(answers) == 4, out
    expected = numpy_forward(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"))  # send.py's rows
    for y in answers:
        np.testing.assert_allclose(np.array(ast.literal_eval(y)), expected, atol=1e-5)


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
        answer = post_rows(port, [[0.1, 0.2, 0.3, 0.4]])
    expected = numpy_forward(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"))
    np.testing.assert_allclose(np.array(answer["y"]), expected, atol=1e-5)


@pytest.mark.support("Django + Celery", "-P prefork", case="examples/django_celery")
def test_django_celery_example(models: Models, tmp_path: Any) -> None:
    """A Django view enqueues a prediction that a Celery prefork worker answers."""
    requires.package("django")
    env = {"BROKER_URL": requires.redis_url(), "MODEL_PATH": models.keras}
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
    expected = numpy_forward(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"))
    np.testing.assert_allclose(np.array(body["y"]), expected, atol=1e-5)


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
    from tests.support.servers import redis_names

    requires.package("rq")
    url = requires.redis_url()
    cwd = os.path.join(EXAMPLES, "rq_worker")
    with redis_names(url, "fs-example-rq") as queue:
        env = {"REDIS_URL": url, "RQ_QUEUE": queue, "MODEL_PATH": models.keras}
        with worker_process(["worker"], env, str(tmp_path / "w.log"), "worker ready", cwd=cwd):
            out = run_example(["enqueue.py"], cwd, env, timeout=360)
    lines = re.findall(r"horse (\d+) host (\d+): (\[\[.*\]\])", out)
    assert len(lines) == 4 and len({horse for horse, _, _ in lines}) == 4, out
    assert len({host for _, host, _ in lines}) == 1
    expected = numpy_forward(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"))
    for _, _, y in lines:
        np.testing.assert_allclose(np.array(ast.literal_eval(y)), expected, atol=1e-5)
