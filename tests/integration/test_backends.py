"""torch and JAX without Keras: plain models behind proxies, and parents that ran them, forked.

Each scenario runs in a freshly spawned interpreter that imports forksafe
before the framework, as a user's worker module would; the late-import tests
run a fresh interpreter that runs the framework first and forks without
forksafe, as a Spark daemon would.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import forksafe
from tests import scenarios
from tests.support import requires
from tests.support.children import run_clean, run_python
from tests.support.workers import ROOT

pytestmark = pytest.mark.timeout(300)
TORCH = pytest.mark.needs("torch")
JAX = pytest.mark.needs("jax")
ISOS = scenarios.ISOLATIONS
# What these tests need of the machine: CI has two cores, so this fails there.
ONE_THREAD = "needs 2+ cores: torch runs one intra-op thread here, no pool to start"


def torch_parent(parent_did: str) -> dict[str, Any]:
    """Run ``scenarios.torch_parent``; skip where torch has a single thread (no pool)."""
    result = run_clean(scenarios.torch_parent, parent_did, spawn=True, timeout=240).get()
    if result["threads"] < 2 and parent_did != "large op, one thread":
        requires.missing(ONE_THREAD)
    return result  # type: ignore[no-any-return]


@TORCH
def test_a_large_torch_op_hangs_the_child_of_a_parent_that_ran_one() -> None:
    """Without forksafe: the measured hang this detection exists for (and the way round it)."""
    hung = run_clean(scenarios.torch_child_large_op, False, spawn=True).get()
    if hung["threads"] < 2:
        requires.missing(ONE_THREAD)
    assert hung["outcome"] == "timed out", hung  # hung: not answered, nor crashed
    one_thread = run_clean(scenarios.torch_child_large_op, True, spawn=True).get()
    assert one_thread["outcome"] == "returned", one_thread  # set_num_threads(1) avoids it


@TORCH
@pytest.mark.support(
    "os.fork", "", start="fork", case="parent ran the framework", frameworks=("torch module",)
)
def test_child_of_a_torch_parent_that_ran_a_large_op_refuses_or_hosts() -> None:
    """inprocess raises at once, naming torch and why no line is known; auto answers from a host."""
    result = torch_parent("large op")
    child, reference = result["child"], result["reference"]
    assert result["parent_state"].torch.started
    assert child["state"].torch.inherited and not child["state"].torch.started
    error = child["inprocess"]
    assert isinstance(error, forksafe.InheritedRuntimeError)
    assert child["inprocess_seconds"] < 5.0
    message = str(error)
    assert f"PyTorch was started in parent process {result['parent_pid']}" in message
    assert "not recorded: torch starts its CPU thread pool in native code" in message
    assert "import forksafe first" not in message  # advice that would not help here
    assert "torch.set_num_threads(1)" in message
    for iso in ("auto", "process"):
        np.testing.assert_allclose(child[iso], reference, atol=1e-5)
        assert child[f"{iso}_info"].in_effect == "process"
        assert child[f"{iso}_info"].backend == "torch"
    assert len(child["warnings"]) == 1 and "PyTorch" in child["warnings"][0]


@TORCH
@pytest.mark.parametrize(
    "parent_did",
    ["import", "small op", "large op in a finished thread", "large op, one thread"],
)
def test_torch_parent_without_a_pool_keeps_children_in_process(parent_did: str) -> None:
    """No false positives: a parent whose torch has no pool sends no child to a host."""
    result = torch_parent(parent_did)
    child, reference = result["child"], result["reference"]
    assert not result["parent_state"].torch.started
    assert not child["state"].torch.inherited
    for iso in ("auto", "inprocess"):
        np.testing.assert_allclose(child[iso], reference, atol=1e-5)
        assert child[f"{iso}_info"].in_effect == "inprocess"
    assert child["warnings"] == []


@TORCH
@JAX
def test_jax_threads_are_not_mistaken_for_torchs_pool() -> None:
    """A parent that imported torch, then started JAX (many native threads): only JAX counts."""
    result = torch_parent("JAX op")
    state, child = result["parent_state"], result["child"]
    assert state.jax.started and not state.torch.started
    assert child["state"].jax.inherited and not child["state"].torch.inherited
    assert "JAX was started" in str(child["inprocess"])
    assert "PyTorch" not in str(child["inprocess"])
    np.testing.assert_allclose(child["auto"], result["reference"], atol=1e-5)


@JAX
def test_child_of_a_jax_parent_names_the_parents_line() -> None:
    """JAX started by user code after importing forksafe: the message has its file:line."""
    result = run_clean(scenarios.jax_parent, True, spawn=True, timeout=240).get()
    child, reference = result["child"], result["reference"]
    assert result["parent_state"].jax.started_at == result["where"]
    assert child["state"].jax.started_at == result["where"]
    error = child["inprocess"]
    assert isinstance(error, forksafe.InheritedRuntimeError)
    assert f"JAX was started in parent process {result['parent_pid']} at {result['where']}" in (
        str(error)
    )
    for iso in ("auto", "process"):
        np.testing.assert_allclose(child[iso], reference, atol=1e-5)
        assert child[f"{iso}_info"].in_effect == "process"
        assert child[f"{iso}_info"].backend == "jax"


@JAX
@pytest.mark.support("os.fork", "", start="fork", frameworks=("JAX function",))
def test_jax_function_model_loads_in_each_child_of_an_untouched_parent() -> None:
    """A jitted function with its parameters bound: every isolation but process is in-process."""
    result = run_clean(scenarios.jax_parent, False, spawn=True, timeout=240).get()
    child, reference = result["child"], result["reference"]
    assert not result["parent_state"].jax.started
    for iso in ISOS:
        np.testing.assert_allclose(child[iso], reference, atol=1e-5)
        assert child[f"{iso}_info"].in_effect == ("process" if iso == "process" else "inprocess")
        assert child[f"{iso}_info"].loads == 1
    assert child["state"].jax.started and not child["state"].jax.inherited


@pytest.mark.parametrize(
    "framework", [pytest.param("torch", marks=TORCH), pytest.param("jax", marks=JAX)]
)
def test_factory_model_pickled_to_a_spawn_worker_loads_there(framework: str) -> None:
    """A torch module or JAX function proxy reaches a spawn worker unloaded; it loads there."""
    result = run_clean(scenarios.spawned_factory_model, framework, spawn=True, timeout=240).get()
    answer = result["answer"]
    assert not answer["before"].loaded
    assert answer["after"].loaded and answer["after"].owner_pid == answer["pid"]
    assert answer["after"].backend == framework
    np.testing.assert_allclose(answer["y"], result["reference"], atol=1e-5)
    assert not result["parent_loaded"]
    assert not getattr(result["parent_state"], framework).started


@TORCH
def test_torch_tensors_go_into_a_host_and_numpy_comes_back() -> None:
    """A tensor that requires grad is a fine argument; the answer arrives detached, as numpy."""
    result = run_clean(scenarios.hosted_torch_tensors, spawn=True, timeout=240).get()
    assert result["backend"] == "torch"
    assert result["host_pid"] not in (None, result["pid"])
    assert isinstance(result["y"], np.ndarray)
    np.testing.assert_allclose(result["y"], result["reference"], atol=1e-5)


@TORCH
def test_torch_state_dict_from_a_host_holds_numpy() -> None:
    """Every tensor in a host's answer arrives as numpy, whatever mapping holds it."""
    result = run_clean(scenarios.hosted_torch_tensors, spawn=True, timeout=240).get()
    assert set(result["state"].values()) == {"numpy"}


# The parent runs the framework and forks without ever importing forksafe (a
# Spark Python daemon, any process manager that runs the framework first);
# only the child imports it.
LATE_IMPORT = """
import json, multiprocessing, os, sys, time
{start}
import numpy as np

def child(conn):
    import warnings
    import forksafe
    from tests.models import SEED, numpy_forward, {factory}
    x = np.random.default_rng(SEED + 1).standard_normal((8, 4)).astype("float32")
    out = {{"state": forksafe.runtime_state().{name}.__dict__}}
    start = time.monotonic()
    try:
        forksafe.lazy_model({factory}, isolation="inprocess")(x)
        out["inprocess"] = None
    except forksafe.InheritedRuntimeError as exc:
        out["inprocess"] = str(exc)
    out["inprocess_seconds"] = time.monotonic() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", forksafe.ForkSafeWarning)
        auto = forksafe.lazy_model({factory})
        y = np.asarray(auto(x))
    out["auto_error"] = float(np.abs(y - numpy_forward(x)).max())
    out["auto_in_effect"] = forksafe.info(auto).in_effect
    out["pid"] = os.getpid()
    conn.send(out)

receiver, sender = multiprocessing.Pipe(duplex=False)
process = multiprocessing.get_context("fork").Process(target=child, args=(sender,))
process.start()
answer = receiver.recv() if receiver.poll(60) else None
process.kill()
process.join()
print(json.dumps({{"parent_pid": os.getpid(), "child": answer}}))
"""
STARTS = {
    "tensorflow": ("import tensorflow as tf\ntf.constant(1.0) + 1", "build_keras"),
    "jax": ("import jax.numpy as jnp\njnp.ones(3).block_until_ready()", "build_jax"),
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("tensorflow", marks=pytest.mark.needs("tensorflow", "keras")),
        pytest.param("jax", marks=JAX),
    ],
)
def test_parent_that_ran_the_framework_before_importing_forksafe_is_detected(name: str) -> None:
    """The child sees the runtime's state set but its threads gone: inherited, not started."""
    start, factory = STARTS[name]
    code = LATE_IMPORT.format(start=start, factory=factory, name=name)
    env = {"KERAS_BACKEND": "tensorflow", "PYTHONPATH": ROOT}
    result = json.loads(run_python(code, timeout=240, **env).splitlines()[-1])
    child = result["child"]
    assert child is not None, "the child hung (killed after 60 s)"
    assert child["state"]["inherited"] and not child["state"]["started"]
    assert child["state"]["parent_pid"] == result["parent_pid"]
    assert child["inprocess"] is not None and child["inprocess_seconds"] < 5.0
    assert "before forksafe was imported" in child["inprocess"]
    assert child["auto_in_effect"] == "process"
    assert child["auto_error"] < 1e-5


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("tensorflow", marks=pytest.mark.needs("tensorflow")),
        pytest.param("jax", marks=JAX),
        pytest.param("torch", marks=TORCH),
    ],
)
def test_process_that_ran_the_framework_before_importing_forksafe_started_it(name: str) -> None:
    """No false positive: the runtime's threads are here, so it started here, not inherited."""
    start = {
        **{key: value[0] for key, value in STARTS.items()},
        "torch": "import torch\na = torch.randn(1000, 1000)\n_ = a @ a",
    }[name]
    code = f"{start}\nimport forksafe\nstate = forksafe.runtime_state().{name}\n"
    code += "print(state.started, state.inherited)"
    out = run_python(code, timeout=120).splitlines()[-1]
    assert out == "True False"
