"""Proxies reaching multiprocessing, ProcessPoolExecutor and Dask workers: one load each."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.models import Models
from tests.support import requires
from tests.support.children import run_clean
from tests.workers import pools

pytestmark = pytest.mark.timeout(300)
PARENT = pytest.mark.parametrize("parent_ran_tf", [False, True], ids=["untouched", "ran-tf"])


def check(answers: list[dict[str, Any]], models: Models, *, hosted: bool) -> None:
    """Right numbers; each worker loaded once; hosted exactly when the runtime was inherited.

    ``answers`` carry the pid, the proxy's id and its load count.
    """
    _, reference = models.reference()
    assert answers
    for answer in answers:
        np.testing.assert_allclose(answer["y"], reference, atol=1e-5)
        assert answer["loads"] == 1
        assert answer["in_effect"] == ("process" if hosted else "inprocess")
    assert len({answer["pid"] for answer in answers}) <= 2
    # A proxy passed as an argument arrives once per task; each worker keeps one.
    shipped: dict[int, set[int]] = {}
    for answer in answers:
        if not answer.get("inherited"):
            shipped.setdefault(answer["pid"], set()).add(answer["proxy"])
    assert all(len(ids) == 1 for ids in shipped.values()), shipped


@pytest.mark.support(
    "multiprocessing", "Pool", start="{method}", case="{parent_ran_tf?parent ran TensorFlow}"
)
@PARENT
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_pool(models: Models, method: str, parent_ran_tf: bool) -> None:
    """Pool workers of every start method; fork workers also use an inherited proxy."""
    answers = run_clean(pools.pool, models, method, parent_ran_tf, timeout=240).get()
    check(answers, models, hosted=parent_ran_tf and method == "fork")


@pytest.mark.support(
    "concurrent.futures",
    "ProcessPoolExecutor",
    start="{method}",
    case="{parent_ran_tf?parent ran TensorFlow}",
)
@PARENT
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(models: Models, method: str, parent_ran_tf: bool) -> None:
    """ProcessPoolExecutor with fork and spawn contexts."""
    answers = run_clean(pools.executor, models, method, parent_ran_tf, timeout=240).get()
    check(answers, models, hosted=parent_ran_tf and method == "fork")


@pytest.mark.support(
    "Dask", "LocalCluster", start="spawn", case="{parent_ran_tf?parent ran TensorFlow}"
)
@PARENT
def test_dask_local_cluster(models: Models, parent_ran_tf: bool) -> None:
    """dask.distributed LocalCluster with process workers (spawned: never hosted)."""
    requires.package("distributed")
    answers = run_clean(pools.dask, models, parent_ran_tf, timeout=240).get()
    check(answers, models, hosted=False)
