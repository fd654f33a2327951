"""multiprocessing, concurrent.futures and Dask workers, driven from a clean parent."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any

import numpy as np

import forksafe
from tests.models import Models

INHERITED: forksafe.ModelProxy | None = None  # set before a fork pool starts


def answer(proxy: Any, x: np.ndarray) -> dict[str, Any]:
    """Predict in a worker and say how the model is held there."""
    y = np.asarray(proxy.predict_on_batch(x))
    info = forksafe.info(proxy)
    return {
        "pid": os.getpid(),
        "proxy": id(proxy),
        "y": y,
        "loads": info.loads,
        "in_effect": info.in_effect,
    }


def answer_inherited(x: np.ndarray) -> dict[str, Any]:
    """Predict with the module-level proxy a fork worker inherited."""
    assert INHERITED is not None
    return {**answer(INHERITED, x), "inherited": True}


def _parent(models: Models, parent_ran_tf: bool) -> tuple[forksafe.ModelProxy, np.ndarray]:
    x, _ = models.reference()
    if parent_ran_tf:
        import keras

        keras.models.load_model(models.keras).predict(x, verbose=0)
    return forksafe.load_model(models.keras), x


def pool(models: Models, method: str, parent_ran_tf: bool) -> list[dict[str, Any]]:
    """multiprocessing.Pool: the proxy passed as an argument and, with fork, inherited."""
    global INHERITED
    proxy, x = _parent(models, parent_ran_tf)
    INHERITED = proxy
    with multiprocessing.get_context(method).Pool(2) as workers:
        answers = workers.starmap(answer, [(proxy, x)] * 6)
        if method == "fork":
            answers += workers.map(answer_inherited, [x] * 6)
    return answers


def executor(models: Models, method: str, parent_ran_tf: bool) -> list[dict[str, Any]]:
    """concurrent.futures.ProcessPoolExecutor with the proxy as an argument."""
    proxy, x = _parent(models, parent_ran_tf)
    ctx = multiprocessing.get_context(method)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as workers:
        return list(workers.map(answer, [proxy] * 6, [x] * 6, timeout=120))


def dask(models: Models, parent_ran_tf: bool) -> list[dict[str, Any]]:
    """A dask.distributed LocalCluster with two worker processes."""
    from distributed import Client, LocalCluster

    proxy, x = _parent(models, parent_ran_tf)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(answer, [proxy] * 6, [x] * 6, pure=False)
        return client.gather(futures)  # type: ignore[no-any-return]
