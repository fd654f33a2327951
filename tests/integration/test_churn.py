"""Fork per job: children that live for one load each are noticed, and warned about once."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.models import Models
from tests.support.children import fork_call, fork_many, run_clean

pytestmark = pytest.mark.timeout(400)


def _load_in_child(proxy: forksafe.ModelProxy, x: np.ndarray) -> dict[str, Any]:
    """In a fork child: predict, and say what warned and how the model was held."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = np.asarray(proxy.predict_on_batch(x))
    info = forksafe.info(proxy)
    return {
        "pid": os.getpid(),
        "y": y,
        "loads": info.loads,
        "in_effect": info.in_effect,
        "warnings": [str(w.message) for w in caught if w.category is forksafe.ForkSafeWarning],
    }


def _one_child_per_job(path: str, jobs: int) -> dict[str, Any]:
    """In an untouched parent: one fork child per job, one after another, each loading."""
    x = np.load(os.path.join(os.path.dirname(path), "reference.npz"))["x"]
    proxy = forksafe.load_model(path)
    children = [fork_call(_load_in_child, proxy, x, timeout=120).get() for _ in range(jobs)]
    return {"parent": os.getpid(), "children": children, "parent_loads": forksafe.info(proxy).loads}


def _live_pool(path: str, workers: int, folder: str) -> dict[str, Any]:
    """In an untouched parent: ``workers`` children that load at once and stay until all did."""
    x = np.load(os.path.join(os.path.dirname(path), "reference.npz"))["x"]
    proxy = forksafe.load_model(path)

    def worker(index: int) -> dict[str, Any]:
        answer = _load_in_child(proxy, x)
        open(os.path.join(folder, f"loaded-{index}"), "w").close()
        deadline = time.monotonic() + 120
        while len(os.listdir(folder)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        return answer

    return {"children": [outcome.get() for outcome in fork_many(worker, workers, timeout=180)]}


@pytest.mark.keras_backend("tensorflow")
def test_fifth_short_lived_child_warns_once_naming_shared(models: Models) -> None:
    """Six children, one job each: the fifth warns (isolation='shared', the guide), once."""
    result = run_clean(_one_child_per_job, models.keras, 6, timeout=360).get()
    _, reference = models.reference()
    children = result["children"]
    for child in children:
        np.testing.assert_allclose(child["y"], reference, atol=1e-5)
        assert child["loads"] == 1 and child["in_effect"] == "inprocess"
    assert len({child["pid"] for child in children}) == 6
    assert result["parent_loads"] == 0  # the parent never loaded
    warned = [index for index, child in enumerate(children) if child["warnings"]]
    assert warned == [4], [child["warnings"] for child in children]
    (message,) = children[4]["warnings"]
    assert "isolation='shared'" in message and "docs/guides/recycling.md" in message
    assert f"fork children of process {result['parent']}" in message


@pytest.mark.keras_backend("tensorflow")
def test_a_pool_loading_at_once_never_warns(models: Models, tmp_path: Any) -> None:
    """Six long-lived workers loading together (a prefork pool starting): no warning."""
    result = run_clean(_live_pool, models.keras, 6, str(tmp_path), timeout=360).get()
    _, reference = models.reference()
    for child in result["children"]:
        np.testing.assert_allclose(child["y"], reference, atol=1e-5)
        assert child["loads"] == 1
        assert child["warnings"] == []
