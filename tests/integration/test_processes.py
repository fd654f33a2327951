"""Proxies crossing process boundaries: pickled to spawn workers; TF1 graph mode in threads."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

import forksafe
from tests import scenarios
from tests.models import Models
from tests.support.children import run_clean

pytestmark = pytest.mark.timeout(180)


@pytest.mark.support(
    "multiprocessing", "Process", start="spawn", case="proxy pickled to the worker"
)
def test_proxy_pickled_to_a_spawn_worker_loads_there(models: Models) -> None:
    """Multiprocessing spawn: the worker gets an unloaded proxy that loads and predicts."""
    x, reference = models.reference()
    proxy = forksafe.load_model(models.keras)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(scenarios.spawn_worker, (proxy, x)).get(timeout=120)
    assert not result["before"].loaded
    assert result["after"].loaded
    assert result["after"].owner_pid == result["pid"]
    np.testing.assert_allclose(result["y"], reference, atol=1e-5)
    assert not forksafe.info(proxy).loaded  # the parent never loaded


@pytest.mark.parametrize("user_session", [False, True], ids=["own-session", "user-session"])
def test_graph_mode_predict_from_another_thread_after_clear_session(
    models: Models, user_session: bool
) -> None:
    """tf_keras in TF1 graph mode: another thread predicts through the proxy, same numbers.

    The bare model fails the same way the original report did, proving the
    scenario is real.
    """
    _, reference = models.reference()
    result = run_clean(scenarios.graph_mode, models, user_session).get()
    thread = result["thread"]
    assert thread["bare"] is not None  # the unproxied model breaks in another thread
    np.testing.assert_allclose(result["main"], reference, atol=1e-5)
    np.testing.assert_allclose(thread["predict"], reference, atol=1e-5)
    np.testing.assert_allclose(thread["predict_on_batch"], reference, atol=1e-5)
    assert thread["weights"] == 4
    assert result["info"].graph_mode
    assert result["info"].backend == "tensorflow"
    assert result["owned_by_user"] is user_session
