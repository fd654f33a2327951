"""The pytest plugin, tested the way users meet it: pytest runs in a subprocess (pytester)."""

from __future__ import annotations

import os
import time
from multiprocessing.shared_memory import SharedMemory

import pytest

from forksafe._frameworks import display
from tests.models import KERAS_BACKEND

pytestmark = pytest.mark.timeout(300)

GOOD_MODULE = """
import os

import numpy as np

import forksafe

MODEL = forksafe.load_model(os.environ["FS_MODEL"])


def predict():
    return MODEL.predict_on_batch(np.ones((2, 4), "float32")).shape
"""

BAD_MODULE = """
import os

import keras
import numpy as np

MODEL = keras.models.load_model(os.environ["FS_MODEL"])


def predict():
    return MODEL.predict(np.ones((512, 4), "float32"), verbose=0)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest on the pytester directory in a subprocess, bounded."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=240)


def test_fork_safe_module_passes_and_tiny_models_answer(pytester: pytest.Pytester) -> None:
    """assert_fork_safe passes for a lazily loading module; tiny_model* give real models."""
    pytester.makepyfile(goodmod=GOOD_MODULE)
    pytester.makepyfile(
        test_good="""
        import numpy as np
        import forksafe

        def test_fork_safe(tiny_model_path, assert_fork_safe, monkeypatch):
            tiny = tiny_model_path()
            monkeypatch.setenv("FS_MODEL", tiny.path)
            assert_fork_safe("goodmod:predict")
            assert not forksafe.runtime_state().tensorflow.started  # still untouched here

        def test_tiny_model_in_process(tiny_model):
            model, saved = tiny_model("h5", inputs=5, outputs=2, hidden=(6, 4), seed=3)
            np.testing.assert_allclose(model.predict_on_batch(saved.x), saved.y, atol=1e-5)
            loaded = forksafe.load_model(saved.path)
            np.testing.assert_allclose(loaded.predict_on_batch(saved.x), saved.y, atol=1e-5)
    """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


@pytest.mark.keras_backend("tensorflow", "jax")  # loading a small model starts no torch pool
def test_module_that_loads_at_import_is_explained(pytester: pytest.Pytester) -> None:
    """assert_fork_safe names the import line that started the runtime."""
    pytester.makepyfile(badmod=BAD_MODULE)
    pytester.makepyfile(
        test_bad="""
        def test_bad(tiny_model_path, assert_fork_safe, monkeypatch):
            monkeypatch.setenv("FS_MODEL", tiny_model_path().path)
            assert_fork_safe("badmod:predict")
    """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*importing 'badmod' started a framework runtime ({display(KERAS_BACKEND)} at "
            "*badmod.py:6)*",
        ]
    )


def test_hanging_child_reports_timeout_with_the_hanging_call(pytester: pytest.Pytester) -> None:
    """run_in_fork kills a hung child at the timeout and shows where it hung."""
    pytester.makepyfile(badmod=BAD_MODULE)
    pytester.makepyfile(
        test_hang="""
        import importlib

        def test_hang(tiny_model_path, run_in_fork, monkeypatch):
            monkeypatch.setenv("FS_MODEL", tiny_model_path().path)
            badmod = importlib.import_module("badmod")  # loads, so TensorFlow runs here
            run_in_fork(badmod.predict, timeout=5)
    """
    )
    start = time.monotonic()
    result = run(pytester)
    elapsed = time.monotonic() - start
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*ForkTimeoutError: forked child * did not finish within 5 s and was killed*",
            "*Python stacks of the child when it was stopped:*",
            "*File *badmod.py*, line 10 in predict*",
        ]
    )
    assert elapsed < 90  # model build and TensorFlow imports, plus 5 s and the stack dump


def test_child_exception_is_reraised_with_its_traceback(pytester: pytest.Pytester) -> None:
    """An exception in the child fails the test with the child's own traceback."""
    pytester.makepyfile(
        test_raise="""
        def divide():
            return 1 / 0

        def test_raises(run_in_fork):
            run_in_fork(divide)
    """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RemoteTraceback*", "*in divide*", "*ZeroDivisionError*"])


def test_forked_marker(pytester: pytest.Pytester) -> None:
    """@pytest.mark.forked runs the body in a child: pass, fail and hang each reported."""
    pytester.makepyfile(
        test_marker="""
        import os
        import time
        import pytest

        @pytest.fixture
        def parent_pid():
            return os.getpid()

        @pytest.mark.forked
        def test_runs_in_a_child(parent_pid):
            assert os.getpid() != parent_pid

        @pytest.mark.forked(timeout=10)
        def test_fails_in_a_child():
            assert 1 + 1 == 3

        @pytest.mark.forked(timeout=2)
        def test_hangs_in_a_child():
            time.sleep(60)
    """
    )
    start = time.monotonic()
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*assert (1 + 1) == 3*",
            "*did not finish within 2.0 s*",
            "*line 19 in test_hangs_in_a_child*",
        ]
    )
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("how", ["option", "ini"])
def test_default_timeout_from_option_and_ini(pytester: pytest.Pytester, how: str) -> None:
    """--forksafe-timeout and the forksafe_timeout ini setting bound the fixtures."""
    pytester.makepyfile(
        test_timeout="""
        import time

        def test_sleep(run_in_fork):
            run_in_fork(time.sleep, 30)
    """
    )
    if how == "ini":
        pytester.makeini("[pytest]\nforksafe_timeout = 1\n")
        result = run(pytester)
    else:
        result = run(pytester, "--forksafe-timeout=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*did not finish within 1.0 s*"])


def test_forksafe_proxy_detects_leaks(pytester: pytest.Pytester) -> None:
    """A proxy still referenced after the test (its host alive) and a segment left: errors."""
    segment = f"forksafe_plugin_test_{os.getpid()}"
    pytester.makepyfile(
        test_leaks=f"""
        import os
        from multiprocessing.shared_memory import SharedMemory
        from multiprocessing import resource_tracker

        KEPT = []

        class Probe:
            def pid(self):
                return os.getpid()

        def test_clean(forksafe_proxy):
            proxy = forksafe_proxy(Probe, isolation="process", timeout=30)
            assert proxy.pid() != os.getpid()

        def test_leaks_a_host(forksafe_proxy):
            proxy = forksafe_proxy(Probe, isolation="process", timeout=30)
            proxy.pid()
            KEPT.append(proxy)

        def test_leaks_a_segment(forksafe_proxy):
            shm = SharedMemory(name="{segment}", create=True, size=16)
            resource_tracker.unregister(shm._name, "shared_memory")
            shm.close()
    """
    )
    try:
        result = run(pytester)
    finally:
        try:
            leftover = SharedMemory(name=segment)
        except FileNotFoundError:
            pass
        else:
            leftover.close()
            leftover.unlink()
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*leaked after the test: host processes [[]*[]], "
            "shared-memory segments [[][]]; 1 proxy*",
            "*leaked after the test: host processes [[][]], "
            f"shared-memory segments [[]'{segment}'[]]*",
        ]
    )
