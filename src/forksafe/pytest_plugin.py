"""pytest plugin: fixtures and a marker to test your own workers for fork safety.

Loaded automatically (entry point ``pytest11``). Fixtures: ``run_in_fork``,
``run_in_subprocess``, ``assert_fork_safe``, ``tiny_model``,
``tiny_model_path``, ``forksafe_proxy``. Marker:
``@pytest.mark.forked(timeout=30)``. Default timeout: ``--forksafe-timeout``
or the ``forksafe_timeout`` ini setting (30 s).
"""

from __future__ import annotations

import functools
import gc
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from forksafe import testing

_DEFAULT_TIMEOUT = 30.0


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--forksafe-timeout`` and the ``forksafe_timeout`` ini setting."""
    group = parser.getgroup("forksafe")
    group.addoption(
        "--forksafe-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="default timeout of forksafe's fork fixtures and marker (30)",
    )
    parser.addini(
        "forksafe_timeout",
        "default timeout of forksafe's fork fixtures and marker",
        default=str(_DEFAULT_TIMEOUT),
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``forked`` marker."""
    config.addinivalue_line(
        "markers",
        "forked(timeout=None): run the test body in a forked child, killed (with "
        "its stacks reported) after timeout seconds",
    )


def default_timeout(config: pytest.Config) -> float:
    """The timeout from the command line, else the ini file, else 30 s."""
    option = config.getoption("--forksafe-timeout")
    if option is not None:
        return float(option)
    value = config.getini("forksafe_timeout")
    try:
        return float(value)
    except ValueError:
        raise pytest.UsageError(
            f"forksafe_timeout must be a number of seconds, got {value!r}"
        ) from None


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run tests marked ``forked`` in a forked child; fixtures are set up in the parent."""
    marker = pyfuncitem.get_closest_marker("forked")
    if marker is None:
        return None
    timeout = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
    if timeout is None:
        timeout = default_timeout(pyfuncitem.config)
    names = pyfuncitem._fixtureinfo.argnames
    body = functools.partial(pyfuncitem.obj, **{n: pyfuncitem.funcargs[n] for n in names})
    __tracebackhide__ = True
    testing.run_in_fork(body, timeout=float(timeout))
    return True


def _with_default(run: Callable[..., Any], config: pytest.Config) -> Callable[..., Any]:
    default = default_timeout(config)

    @functools.wraps(run)
    def bounded(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        return run(*args, timeout=default if timeout is None else timeout, **kwargs)

    return bounded


@pytest.fixture
def run_in_fork(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run_in_fork(fn, *args, timeout=None, **kwargs)``: ``fn`` in a forked child."""
    return _with_default(testing.run_in_fork, request.config)


@pytest.fixture
def run_in_subprocess(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run_in_subprocess(fn, *args, timeout=None, **kwargs)``: ``fn`` in a fresh interpreter."""
    return _with_default(testing.run_in_subprocess, request.config)


@pytest.fixture
def assert_fork_safe(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``assert_fork_safe(target, *, import_first=None, timeout=None)``."""
    return _with_default(testing.assert_fork_safe, request.config)


@pytest.fixture
def tiny_model(tmp_path: Any) -> Callable[..., Any]:
    """Factory: build a tiny Keras model *in this process*, saved in ``tmp_path``.

    Returns a ``(model, TinyModel)`` pair. Building starts the framework
    runtime in the test process; to fork afterwards, use ``tiny_model_path``.
    """

    def build(format: str = "keras", **options: Any) -> tuple[Any, testing.TinyModel]:
        saved = testing.save_tiny_model(str(tmp_path), format, **options)
        options.pop("batch", None)
        return testing.build_tiny_model(**options), saved

    return build


@pytest.fixture
def tiny_model_path(tmp_path: Any, request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Factory: build and save a tiny Keras model in a subprocess; returns a ``TinyModel``.

    The test process never starts the framework, so it can still fork
    workers that run TensorFlow.
    """
    timeout = max(default_timeout(request.config), 120.0)

    def build(format: str = "keras", **options: Any) -> testing.TinyModel:
        return testing.run_in_subprocess(
            testing.save_tiny_model, str(tmp_path), format, timeout=timeout, **options
        )

    return build


@pytest.fixture
def forksafe_proxy() -> Iterator[Callable[..., Any]]:
    """Factory: ``forksafe_proxy(path_or_factory, *args, **opts)`` returns a proxy.

    At teardown, once the test dropped its proxies, their host processes must
    exit and no shared-memory segment may be left; otherwise the test errors.
    """
    import forksafe

    segments_before = testing.shm_segments()
    created: list[weakref.ref[forksafe.ModelProxy]] = []

    def make(source: Any, *args: Any, **options: Any) -> forksafe.ModelProxy:
        if isinstance(source, (str, os.PathLike)):
            proxy = forksafe.load_model(source, *args, **options)
        else:
            proxy = forksafe.lazy_model(source, *args, **options)
        created.append(weakref.ref(proxy))
        return proxy

    yield make
    hosts = set()
    for ref in created:
        proxy = ref()
        if proxy is not None:
            pid = forksafe.info(proxy).host_pid
            if pid is not None:
                hosts.add(pid)
        del proxy
    gc.collect()
    alive = sum(ref() is not None for ref in created)

    def clean() -> bool:
        return not (hosts & testing.host_processes()) and testing.shm_segments() <= segments_before

    if not testing.wait_until(clean, 5.0):
        leaked_hosts = sorted(hosts & testing.host_processes())
        leaked_segments = sorted(testing.shm_segments() - segments_before)
        raise AssertionError(
            f"forksafe_proxy: leaked after the test: host processes {leaked_hosts}, "
            f"shared-memory segments {leaked_segments}; {alive} proxy(ies) still "
            "referenced (a global, a cache, a cycle?)"
        )
