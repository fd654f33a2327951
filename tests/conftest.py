"""Shared fixtures and backend markers.

The suite runs under any Keras backend (``KERAS_BACKEND=tensorflow|jax|torch``,
or ``nox -s "tests(backend='jax')"``). Two markers say what a test needs:

- ``@pytest.mark.needs("torch")``: the package must be importable; without
  it the test is skipped, except under ``CI=true``, where it fails.
- ``@pytest.mark.keras_backend("tensorflow")``: the test is about Keras on
  that backend (a SavedModel, tf_keras next to Keras); it runs only in that
  backend's run of the suite.

Tests under ``BACKEND_SUITE`` are marked ``backend_suite``: the part of the
suite whose outcome depends on Keras' backend, which CI and
``nox -s "tests(backend='jax')"`` run under JAX and torch (``-m backend_suite``)
besides the whole suite under TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
from typing import Any

import pytest

from tests.models import KERAS_BACKEND, Models, build_all
from tests.support import requires
from tests.support.children import run_clean

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Relative to tests/: fork and host behaviour, the proxy itself, transparency.
BACKEND_SUITE = (
    "unit",
    "integration/test_fork.py",
    "integration/test_host.py",
    "integration/test_host_boundary.py",
    "transparency",
)
# Under pytest-xdist (pyproject's addopts), the tests of each of these run on one
# worker, one after the other: a module-scoped setup of minutes runs once, and the
# stress suite's memory figures are not taken beside one another. (By our own
# scheduler below: xdist 3.8's xdist_group marks have no effect under pytest 9.2,
# which no longer reads the node id xdist rewrites.)
ONE_WORKER = {
    "tests/transparency/test_transparency.py": "transparency",
    "tests/stress/test_stress.py": "stress",
}
# The longest runs first, in this order (xdist hands out work in collection order):
# the suite waits for its slowest worker, so none of them may be left to the end.
FIRST = (
    "tests/integration/test_benchmarks.py",
    "tests/transparency/test_transparency.py",
    "tests/integration/test_examples.py",
    "tests/stress/test_stress.py",
    "tests/integration/test_spark.py",
    "tests/integration/test_pytest_plugin.py",
    "tests/integration/test_ray.py",
)
_TESTS = os.path.dirname(os.path.abspath(__file__))


def pytest_configure(config: pytest.Config) -> None:
    """Register the backend markers."""
    config.addinivalue_line(
        "markers", "needs(*packages): skip unless the packages import (fail under CI=true)"
    )
    config.addinivalue_line(
        "markers", "keras_backend(name): run only when Keras' backend is name (KERAS_BACKEND)"
    )
    config.addinivalue_line(
        "markers", "backend_suite: what CI also runs under JAX and torch (see tests/conftest.py)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests under ``BACKEND_SUITE``; put the files of ``FIRST`` first."""
    roots = tuple(os.path.join(_TESTS, path) for path in BACKEND_SUITE)
    for item in items:
        path = str(item.path)
        if any(path == root or path.startswith(root + os.sep) for root in roots):
            item.add_marker(pytest.mark.backend_suite)
    rank = {os.path.join(os.path.dirname(_TESTS), path): i for i, path in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(str(item.path), len(FIRST)))  # stable


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, when it is installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load-by-group scheduling, each file of ``ONE_WORKER`` one group."""
    from xdist.scheduler import LoadGroupScheduling

    class OneWorkerFiles(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            group = ONE_WORKER.get(nodeid.split("::", 1)[0])
            return group if group is not None else str(super()._split_scope(nodeid))

    return OneWorkerFiles(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, for a missing package under CI, fail) what this run cannot test."""
    for marker in item.iter_markers("keras_backend"):
        if KERAS_BACKEND not in marker.args:
            pytest.skip(f"about Keras on {'/'.join(marker.args)}; this run uses {KERAS_BACKEND}")
    for marker in item.iter_markers("needs"):
        for name in marker.args:
            requires.installed(name)


_LOGS_BEFORE = pytest.StashKey[set[str]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Note the runtime directory's files (in the controller only, under pytest-xdist)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        from forksafe._host.runtime_dir import runtime_dir

        session.config.stash[_LOGS_BEFORE] = set(os.listdir(runtime_dir()))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The logs of this run's shared hosts go when it ends (a user's stay: one per model).

    Once every pytest-xdist worker is done: a worker's would remove the logs of
    hosts that other workers' tests still read. Sockets and locks go with the
    hosts themselves (tests/integration/test_shared.py).
    """
    before = session.config.stash.get(_LOGS_BEFORE, None)
    if before is None:
        return
    from forksafe._host.runtime_dir import runtime_dir

    for name in set(os.listdir(runtime_dir())) - before:
        if name.endswith(".log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(runtime_dir(), name))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Every model format with its reference data, built outside the test process.

    Built once per run: pytest-xdist's workers share the first one's (read only),
    under a lock in the run's common temporary directory.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        directory = str(tmp_path_factory.mktemp("models"))
        return run_clean(build_all, directory, timeout=180, spawn=True).get()  # type: ignore[no-any-return]
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / "models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait while the first builds
        if not (shared / "models.pkl").exists():
            (shared / "models").mkdir(exist_ok=True)
            built = run_clean(build_all, str(shared / "models"), timeout=180, spawn=True).get()
            (shared / "models.pkl").write_bytes(pickle.dumps(built))
        return pickle.loads((shared / "models.pkl").read_bytes())  # type: ignore[no-any-return]
