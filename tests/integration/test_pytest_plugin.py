"""The pytest plugin, tested the way users meet it: pytest runs in a subprocess (pytester)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.shared_memory import SharedMemory

import pytest

from forksafe._frameworks import display
from tests.models import KERAS_BACKEND
from tests.support.requires import installed

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


def test_run_in_fork_marker(pytester: pytest.Pytester) -> None:
    """@pytest.mark.run_in_fork runs the body in a child: pass, fail and hang each reported."""
    pytester.makepyfile(
        test_marker="""
        import os
        import time
        import pytest

        @pytest.fixture
        def parent_pid():
            return os.getpid()

        @pytest.mark.run_in_fork
        def test_runs_in_a_child(parent_pid):
            assert os.getpid() != parent_pid

        @pytest.mark.run_in_fork(timeout=10)
        def test_fails_in_a_child():
            assert 1 + 1 == 3

        @pytest.mark.run_in_fork(timeout=2)
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


BESIDE = """
import os
import time

import numpy as np

import forksafe


class Echo:
    def echo(self, x):
        return x


def mark(directory, name):
    open(os.path.join(directory, name), "w").close()


def wait_for(directory, name):
    deadline = time.monotonic() + 200
    while not os.path.exists(os.path.join(directory, name)):
        assert time.monotonic() < deadline, f"no {name} in 200 s"
        time.sleep(0.05)


def send_segments():
    # A host, and 4 MB each way: a segment in this process and one in the host.
    proxy = forksafe.lazy_model(Echo, isolation="process", timeout=60)
    assert proxy.echo(np.ones(1 << 20, "float32")).sum() == 1 << 20
    return proxy


def unrelated_user(directory):
    # Another forksafe user: its host and segments appear while the test runs.
    wait_for(directory, "test-started")
    proxy = send_segments()
    mark(directory, "app-ready")
    wait_for(directory, "test-done")
    del proxy
"""

CHECKED = """
import os

import pytest

import beside

DIRECTORY = os.environ["FS_BESIDE"]


@pytest.fixture
def done():
    yield
    beside.mark(DIRECTORY, "test-done")  # torn down after forksafe_proxy checked


def test_checked(done, forksafe_proxy):
    proxy = forksafe_proxy(beside.Echo, isolation="process", timeout=60)
    proxy.echo(beside.np.ones(1 << 20, "float32"))  # its own segments: they must go
    beside.mark(DIRECTORY, "test-started")
    beside.wait_for(DIRECTORY, "app-ready")
"""


@pytest.mark.parametrize("beside", ["application", "xdist worker"])
def test_forksafe_proxy_counts_only_its_own_leaks(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, beside: str
) -> None:
    """Another forksafe user's live host and segments, made during the test, are not its leaks.

    Beside it: an unrelated application (a sibling process), or the test on
    another pytest-xdist worker. Both hold their host and segments until the
    checked test's teardown is over.
    """
    directory = str(pytester.path)
    monkeypatch.setenv("FS_BESIDE", directory)
    pytester.makepyfile(beside=BESIDE, test_checked=CHECKED)
    if beside == "application":
        code = f"import sys; sys.path.insert(0, {directory!r}); import beside; "
        code += f"beside.unrelated_user({directory!r})"
        app = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        try:
            result = run(pytester, "test_checked.py")
            assert app.wait(timeout=120) == 0
        finally:
            if app.poll() is None:
                os.killpg(app.pid, signal.SIGKILL)
                app.wait()
        result.assert_outcomes(passed=1)
        return
    installed("xdist", "pytest-xdist")
    pytester.makepyfile(
        test_other="""
        import os

        import beside

        def test_other_worker():
            beside.unrelated_user(os.environ["FS_BESIDE"])
    """
    )
    # Two tests, two workers: xdist hands them out one each.
    result = run(pytester, "-n", "2", "test_checked.py", "test_other.py")
    result.assert_outcomes(passed=2)


def test_plugin_is_inert_until_used(pytester: pytest.Pytester) -> None:
    """Loading the plugin imports no forksafe module; the first fixture use does.

    forksafe installs at-fork hooks and TensorFlow import hooks when
    imported: every pytest session of every project with forksafe installed
    would get them (and pay the import) if the entry point imported it.
    """
    pytester.makepyfile(
        test_inert="""
        import sys

        def loaded():
            return sorted(name for name in sys.modules if name.split(".")[0] == "forksafe")

        def test_a_session_that_uses_nothing(request):
            assert request.config.pluginmanager.has_plugin("forksafe")
            assert loaded() == []
            assert "numpy" not in sys.modules

        def test_the_first_fixture_use_imports_it(run_in_fork):
            assert "forksafe" in loaded()
    """
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)


def test_forked_is_left_to_pytest_forked(pytester: pytest.Pytester) -> None:
    """forksafe registers no ``forked`` marker: under --strict-markers it is unknown."""
    pytester.makepyfile(
        test_names="""
        import pytest

        @pytest.mark.forked
        def test_forked():
            pass
    """
    )
    result = run(pytester, "--strict-markers")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*'forked' not found in `markers` configuration option*"])


def test_marker_values_are_checked_naming_the_test(pytester: pytest.Pytester) -> None:
    """Bad marker arguments, and both ``forked`` and ``run_in_fork``, error at setup."""
    pytester.makeini("[pytest]\nmarkers = forked: pytest-forked's marker\n")
    pytester.makepyfile(
        test_bad_markers="""
        import pytest

        @pytest.mark.run_in_fork(timeout="soon")
        def test_text():
            pass

        @pytest.mark.run_in_fork(timeout=-1)
        def test_negative():
            pass

        @pytest.mark.run_in_fork(5, seconds=2)
        def test_unknown_argument():
            pass

        @pytest.mark.forked
        @pytest.mark.run_in_fork
        def test_forked_twice():
            pass

        @pytest.mark.run_in_fork(timeout=5)
        def test_fine():
            pass
    """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*test_text: @pytest.mark.run_in_fork: timeout must be a positive number of "
            "seconds, got 'soon'*",
            "*test_negative: @pytest.mark.run_in_fork: timeout must be a positive number of "
            "seconds, got -1*",
            "*test_unknown_argument: @pytest.mark.run_in_fork: takes one argument, timeout*",
            "*test_forked_twice: @pytest.mark.run_in_fork and @pytest.mark.forked "
            "(pytest-forked) both run the test in a forked child*",
        ]
    )


@pytest.mark.parametrize("how", ["option", "ini"])
def test_bad_default_timeout_names_its_source(pytester: pytest.Pytester, how: str) -> None:
    """A bad --forksafe-timeout or forksafe_timeout stops the session, naming where it came from."""
    pytester.makepyfile(test_any="def test_any():\n    pass\n")
    if how == "ini":
        ini = pytester.makeini("[pytest]\nforksafe_timeout = ten\n")
        result = run(pytester)
        expected = f"*forksafe_timeout in {ini}: must be a positive number of seconds, got 'ten'*"
    else:
        result = run(pytester, "--forksafe-timeout=0")
        expected = "*--forksafe-timeout: must be a positive number of seconds, got 0.0*"
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([expected])
