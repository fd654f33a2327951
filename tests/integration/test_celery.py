"""Real Celery workers (subprocesses) on real brokers, answering with a module-level proxy."""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import numpy as np
import pytest

from tests.models import Models
from tests.support import requires
from tests.support.procs import carrying, pss_kb
from tests.support.workers import celery_worker, runs_tensorflow, wait_until_warm, worker_process

pytestmark = pytest.mark.timeout(300)
celery = requires.package("celery")


def broker_env(kind: str, tmp: str) -> dict[str, str]:
    """Worker environment for a broker: a server-less filesystem one, Redis or RabbitMQ."""
    if kind == "filesystem":
        folder = os.path.join(tmp, "broker")
        os.makedirs(os.path.join(folder, "processed"), exist_ok=True)
        os.makedirs(os.path.join(tmp, "results"), exist_ok=True)
        return {
            "FS_BROKER": "filesystem://",
            "FS_FS_DIR": folder,
            "FS_BACKEND": f"file://{os.path.join(tmp, 'results')}",
        }
    url = requires.service(requires.REDIS_URL if kind == "redis" else requires.AMQP_URL, kind)
    return {"FS_BROKER": url, "FS_BACKEND": url if kind == "redis" else "rpc://"}


def run_worker(
    models: Models,
    tmp: str,
    *,
    broker: str,
    pool: str,
    tasks: int = 8,
    extra: dict[str, str] | None = None,
    task: str = "fs.predict",
) -> tuple[list[dict[str, Any]], int]:
    """Start a worker, send ``tasks`` predictions, return the answers and the worker's pid."""
    from celery import Celery

    from tests.workers.celery_config import close_client, configure

    env = {**broker_env(broker, tmp), "FS_MODEL": models.keras, **(extra or {})}
    queue = f"fs-{uuid.uuid4().hex[:12]}"
    args = celery_worker("tests.workers.celery_app", pool, 2, queue)
    x, _ = models.reference()
    with worker_process(args, env, os.path.join(tmp, "worker.log"), "ready.") as process:
        client = configure(Celery("forksafe_client"), env)
        pending = [client.send_task(task, args=[x.tolist()], queue=queue) for _ in range(tasks)]
        answers = [result.get(timeout=180) for result in pending]
        close_client(client)
        return answers, process.pid


def check(answers: list[dict[str, Any]], models: Models) -> set[int]:
    """Every answer equals the reference; each answering process loaded once."""
    _, reference = models.reference()
    for answer in answers:
        np.testing.assert_allclose(np.asarray(answer["y"]), reference, atol=1e-5)
        assert answer["loads"] == 1
    return {answer["pid"] for answer in answers}


@pytest.mark.support("Celery", "-P {pool}", case="filesystem broker")
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo", "gevent"])
def test_every_pool_on_the_filesystem_broker(models: Models, tmp_path: Any, pool: str) -> None:
    """A module-level proxy answers right in every pool; one load per process."""
    if pool == "gevent":
        requires.package("gevent")
    answers, worker = run_worker(models, str(tmp_path), broker="filesystem", pool=pool)
    pids = check(answers, models)
    assert {a["in_effect"] for a in answers} == {"inprocess"}
    if pool == "prefork":
        assert worker not in pids and len(pids) <= 2
    else:
        assert pids == {worker}  # one process: the worker itself


@pytest.mark.support("Celery", "-P prefork", case="{broker} broker")
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_prefork_on_real_brokers(models: Models, tmp_path: Any, broker: str) -> None:
    """The original report's setup (prefork) on Redis and RabbitMQ."""
    answers, worker = run_worker(models, str(tmp_path), broker=broker, pool="prefork")
    pids = check(answers, models)
    assert worker not in pids and len(pids) <= 2


@pytest.mark.support("Celery", "-P prefork", case="@forksafe.inject, {parent}")
@pytest.mark.parametrize("parent", ["untouched", "ran TensorFlow"])
def test_inject_under_prefork_on_redis(models: Models, tmp_path: Any, parent: str) -> None:
    """A task taking its model from ``@forksafe.inject``: each prefork child loads its own.

    Right answers by value, one load per child, none in the worker's parent
    (nothing loads at decoration); where the parent ran TensorFlow the
    children's models run in hosts, as the module-level proxy's do.
    """
    poisoned = parent == "ran TensorFlow"
    extra = {"FS_PARENT_RUNS_TF": "1"} if poisoned else {}
    answers, worker = run_worker(
        models, str(tmp_path), broker="redis", pool="prefork", extra=extra, task="fs.injected"
    )
    pids = check(answers, models)
    assert worker not in pids and 1 <= len(pids) <= 2
    assert {a["in_effect"] for a in answers} == {"process" if poisoned else "inprocess"}
    for pid in pids:  # each child's own first task found its model unloaded: it loaded it
        assert any(not a["loaded_before"] for a in answers if a["pid"] == pid), answers


@pytest.mark.parametrize(
    ("broker", "pool"), [("filesystem", "prefork"), ("redis", "prefork"), ("filesystem", "threads")]
)
@pytest.mark.support("Celery", "-P {pool}", case="parent ran TensorFlow")
def test_parent_that_ran_tensorflow(models: Models, tmp_path: Any, broker: str, pool: str) -> None:
    """The original report: the worker's parent loaded and predicted at import.

    prefork children inherit a started runtime and answer through model hosts
    (not hanging); threads run in that same process, in-process.
    """
    answers, _ = run_worker(
        models, str(tmp_path), broker=broker, pool=pool, extra={"FS_PARENT_RUNS_TF": "1"}
    )
    check(answers, models)
    expected = "process" if pool == "prefork" else "inprocess"
    assert {a["in_effect"] for a in answers} == {expected}


@pytest.mark.support("Celery", "-P prefork", case="warm-up (forksafe.celery.install)")
def test_install_warms_each_child_and_never_the_parent(models: Models, tmp_path: Any) -> None:
    """forksafe.celery.install: children load before any task; the parent never runs TF."""
    env = {**broker_env("filesystem", str(tmp_path)), "FS_MODEL": models.keras, "FS_WARM": "1"}
    queue = f"fs-{uuid.uuid4().hex[:12]}"
    args = celery_worker("tests.workers.celery_app", "prefork", 2, queue)
    with worker_process(args, env, str(tmp_path / "worker.log"), "ready.") as process:
        children = wait_until_warm(process.pid, 2)
        assert len(children) == 2 and all(runs_tensorflow(pid) for pid in children)
        assert not runs_tensorflow(process.pid)


@pytest.mark.support("Celery", "-P prefork", case="child killed mid-task")
def test_child_killed_mid_task_is_answered_by_its_replacement(
    models: Models, tmp_path: Any
) -> None:
    """SIGKILL a prefork child mid-task (acks_late): the task is redelivered and answered."""
    from celery import Celery

    from tests.workers.celery_config import close_client, configure

    env = {**broker_env("redis", str(tmp_path)), "FS_MODEL": models.keras}
    queue = f"fs-{uuid.uuid4().hex[:12]}"
    marker = str(tmp_path / "first-delivery.pid")
    args = celery_worker("tests.workers.celery_app", "prefork", 1, queue)
    x, reference = models.reference()
    with worker_process(args, env, str(tmp_path / "worker.log"), "ready."):
        client = configure(Celery("forksafe_client"), env)
        result = client.send_task("fs.slow_predict", args=[x.tolist(), marker], queue=queue)
        deadline = time.monotonic() + 60
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        with open(marker, encoding="utf-8") as f:
            killed = int(f.read())
        os.kill(killed, signal.SIGKILL)
        answer = result.get(timeout=120)
        close_client(client)
    assert answer["pid"] != killed
    assert answer["loads"] == 1  # the replacement loaded its own model
    np.testing.assert_allclose(np.asarray(answer["y"]), reference, atol=1e-5)


def _pool_memory(models: Models, tmp: str, poisoned: bool) -> dict[str, Any]:
    """A prefork -c 4 pool on Redis until all four children answered: its processes' PSS."""
    from celery import Celery

    from tests.workers.celery_config import close_client, configure

    marker = f"FS_MARKER={uuid.uuid4().hex}"
    env = {
        **broker_env("redis", tmp),
        "FS_MODEL": models.keras,
        "FS_MARKER": marker.partition("=")[2],
        **({"FS_PARENT_RUNS_TF": "1"} if poisoned else {}),
    }
    queue = f"fs-{uuid.uuid4().hex[:12]}"
    args = celery_worker("tests.workers.celery_app", "prefork", 4, queue)
    x, _ = models.reference()
    log = os.path.join(tmp, f"worker-{poisoned}.log")
    with worker_process(args, env, log, "ready."):
        client = configure(Celery("forksafe_client"), env)
        answered: set[int] = set()
        for _ in range(20):
            batch = [
                client.send_task("fs.predict", args=[x.tolist()], queue=queue) for _ in range(16)
            ]
            answers = [result.get(timeout=180) for result in batch]
            check(answers, models)
            answered |= {a["pid"] for a in answers}
            if len(answered) == 4:
                break
        close_client(client)
        assert len(answered) == 4, f"only {len(answered)} children answered"
        roles = carrying(marker)
        pss = sum(pss_kb(pid) or 0 for pid in roles) / 1024
    return {"roles": sorted(roles.values()), "pss_mb": pss}


@pytest.mark.support(
    "Celery", "-P prefork", case="one template for a pool whose master ran TensorFlow"
)
def test_poisoned_prefork_pool_shares_one_template_at_no_extra_memory(
    models: Models, tmp_path: Any
) -> None:
    """A poisoned prefork -c 4 pool: one template, and no more than 1.15x the memory.

    The master ran TensorFlow, so each child's model runs in a host: all four
    hosts come from one template, and the pool's total PSS stays within 1.15x
    that of the same pool with an untouched master.
    """
    untouched = _pool_memory(models, str(tmp_path), poisoned=False)
    poisoned = _pool_memory(models, str(tmp_path), poisoned=True)
    assert untouched["roles"].count("template") == 0
    assert poisoned["roles"].count("template") == 1, poisoned["roles"]
    assert poisoned["roles"].count("host") == 4, poisoned["roles"]
    ratio = poisoned["pss_mb"] / untouched["pss_mb"]
    print(
        f"\npool PSS: untouched {untouched['pss_mb']:.0f} MB, poisoned {poisoned['pss_mb']:.0f} MB"
    )
    assert ratio <= 1.15, (untouched, poisoned)
