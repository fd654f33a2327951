"""The core promise with real TensorFlow and real ``os.fork``: load per process, never hang."""

from __future__ import annotations

import numpy as np
import pytest

import forksafe
from forksafe._frameworks import display
from tests import scenarios
from tests.models import KERAS_BACKEND, Models
from tests.support import requires
from tests.support.children import run_clean

pytestmark = pytest.mark.timeout(180)


@pytest.mark.support("os.fork", "", start="fork")
def test_child_of_untouched_parent_loads_and_predicts(models: Models) -> None:
    """A child of a parent that never ran TensorFlow loads its own model and predicts right."""
    _, reference = models.reference()
    result = run_clean(scenarios.untouched_parent, models).get()
    child = result["child"]
    assert not child["before"].loaded
    assert child["after"].loaded
    assert child["after"].loads == 1
    assert child["after"].owner_pid == child["pid"]
    assert child["after"].generation >= 1
    np.testing.assert_allclose(child["y"], reference, atol=1e-5)
    # The parent was not loaded by the child's use, and predicts the same numbers itself.
    assert not result["parent_before"].loaded
    assert not result["parent_state"].started
    np.testing.assert_allclose(result["parent_y"], child["y"], atol=1e-6)


@pytest.mark.support(
    "os.fork", "", start="fork", case="parent ran the framework: InheritedRuntimeError"
)
def test_child_of_parent_that_ran_the_framework_fails_fast(models: Models) -> None:
    """With isolation="inprocess" the child of a parent that ran one (large) op fails fast."""
    result = run_clean(scenarios.touched_parent, models).get()
    error = result["error"]
    assert isinstance(error, forksafe.InheritedRuntimeError)
    assert isinstance(error, RuntimeError)
    assert isinstance(error, forksafe.ForkSafeError)
    assert result["elapsed"] < 5.0
    message = str(error)
    assert f"{display(KERAS_BACKEND)} was started in parent process {result['parent_pid']}" in (
        message
    )
    if KERAS_BACKEND == "torch":  # its pool starts in native code: no line to name
        assert "not recorded: torch starts its CPU thread pool" in message
    else:
        assert result["where"] in message  # the parent's file:line that started the runtime
    assert "spawn" in message
    assert "forkserver" in message


def test_child_never_reuses_the_parents_loaded_model(models: Models) -> None:
    """After the parent loaded through the proxy, the child holds nothing and refuses to load."""
    result = run_clean(scenarios.loaded_parent, models).get()
    before, error = result["child"]
    assert result["parent"].loaded
    assert not before.loaded
    assert before.loads == 0
    assert before.owner_pid is None
    if KERAS_BACKEND == "torch":
        # Predicting 8 rows never starts torch's CPU pool: the child loads its own.
        assert error is None
    else:
        assert isinstance(error, forksafe.InheritedRuntimeError)
    assert result["elapsed"] < 5.0


def test_framework_free_model_is_rebuilt_in_child_and_grandchild() -> None:
    """Without a framework runtime the child, and its child, each build their own model."""
    result = run_clean(scenarios.numpy_model_never_reused, spawn=True).get()
    child = result["child"]
    assert result["parent_built_in"] == result["parent_pid"]
    assert not child["first"].loaded
    assert child["built_in"] == child["pid"] != result["parent_pid"]
    was_loaded, built_in, pid, info = child["grandchild"]
    assert not was_loaded
    assert built_in == pid != child["pid"]
    assert info.loads == 1
    assert info.generation == child["first"].generation + 1
    np.testing.assert_array_equal(child["y"], np.full(2, 3.0))


def test_fork_while_another_thread_holds_the_load_lock() -> None:
    """A fork mid-load (lock held by a thread the child lacks) neither deadlocks nor reuses."""
    result = run_clean(scenarios.fork_while_loading, 1.0, spawn=True).get()
    child = result["child"]
    assert child["built_in"] == child["pid"]  # built in the child, not inherited half-done
    assert child["info"].loads == 1
    assert result["parent"].loads == 1


def test_fork_while_keras_is_loading_never_hangs(models: Models) -> None:
    """A fork while another thread is inside Keras' load: the child refuses at once."""
    result = run_clean(scenarios.fork_while_keras_loads, models).get()
    assert result["elapsed"] < 5.0
    if result["error"] is None:  # the fork won the race: nothing had started yet
        np.testing.assert_allclose(result["value"], models.reference()[1], atol=1e-5)
    else:
        assert isinstance(result["error"], forksafe.InheritedRuntimeError)


def test_grandchildren_follow_the_same_rule(models: Models) -> None:
    """A fork of an untouched fork predicts; a fork of a fork that ran TF refuses."""
    result = run_clean(scenarios.child_of_untouched_child, models).get()
    np.testing.assert_allclose(result["clean"], models.reference()[1], atol=1e-5)
    assert isinstance(result["poisoned"], forksafe.InheritedRuntimeError)
    assert f"parent process {result['child_pid']}" in str(result["poisoned"])


@pytest.mark.keras_backend("tensorflow", "jax")  # a tiny torch predict starts no pool
def test_runtime_state_in_parent_and_child(models: Models) -> None:
    """The parent reports the runtime started (with where); the child reports it inherited."""
    result = run_clean(scenarios.child_runtime_state, models).get()
    parent = getattr(result["parent"], KERAS_BACKEND)
    child = getattr(result["child"], KERAS_BACKEND)
    assert parent.imported and parent.started and not parent.inherited
    assert parent.started_at == result["where"]
    assert child.inherited and not child.started
    assert child.parent_pid == result["parent"].pid != result["child"].pid
    assert child.started_at == result["where"]
    assert result["child"].inherited == (child,)
    others = [b for b in result["child"].backends if b.name != KERAS_BACKEND]
    assert not any(b.inherited for b in others)


def test_fork_that_skips_python_hooks_is_caught_at_resolution() -> None:
    """libc fork(): a loaded proxy still holds the parent's model until any proxy resolves.

    Resolution compares pids and runs the child reset for every proxy; this is
    the documented limit of a hot path without a system call.
    """
    result = run_clean(scenarios.raw_fork_backstop, False, spawn=True).get()
    child, parent_pid = result["child"], result["parent_pid"]
    assert child["loaded_first"] == parent_pid  # fast path: no syscall, not caught yet
    assert child["unloaded"] == child["pid"]  # resolution: pid check, reset
    assert child["loaded_after"] == child["pid"]  # ... which reset every proxy
    assert child["generation"] == 1


def test_gevent_reinit_after_a_raw_fork_resets_proxies() -> None:
    """gevent's reinit (its documented step after a fork) runs forksafe's child reset."""
    requires.package("gevent")
    result = run_clean(scenarios.raw_fork_backstop, True, spawn=True).get()
    child = result["child"]
    assert child["loaded_first"] == child["pid"] != result["parent_pid"]
    assert child["unloaded"] == child["pid"]


def test_loading_a_framework_free_model_leaves_tensorflow_unstarted() -> None:
    """A numpy model loaded where TensorFlow is imported: TF stays unstarted, children in-process.

    The check for a caller's trace once created TensorFlow's default graph,
    whose runtime thread made every fork child go to a host.
    """
    result = run_clean(scenarios.plain_load_next_to_tensorflow, timeout=120).get()
    assert not result["state"].started
    built_in, child_pid = result["child"]
    assert built_in == child_pid  # in-process, not in a host
