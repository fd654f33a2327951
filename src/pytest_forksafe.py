"""forksafe's pytest plugin: fixtures and a marker to test your own workers for fork safety.

Registered through the ``pytest11`` entry point ``forksafe`` and inert until
a test uses it: this module imports only pytest and the standard library.
forksafe itself (which installs its at-fork hooks and TensorFlow hooks when
imported) is imported by a fixture or the marker, in the sessions that use
one.

Fixtures: ``run_in_fork``, ``run_in_subprocess``, ``assert_fork_safe``,
``tiny_model``, ``tiny_model_path``, ``forksafe_proxy``. Marker:
``@pytest.mark.run_in_fork(timeout=30)`` (its own name: pytest-forked owns
``forked``). Default timeout: ``--forksafe-timeout`` or the
``forksafe_timeout`` ini setting (30 s).
"""

from __future__ import annotations

import functools
import gc
import math
import os
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

MARKER = "run_in_fork"
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
    """Register the marker; check the timeout settings now, naming where a bad one came from."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(timeout=None): run the test body in a forked child (forksafe), killed "
        "with its stacks reported after timeout seconds",
    )
    default_timeout(config)


def _seconds(value: Any) -> float | None:
    """``value`` as a positive, finite number of seconds, or ``None`` if it is not one."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 and math.isfinite(seconds) else None


def default_timeout(config: pytest.Config) -> float:
    """The timeout from the command line, else the ini file, else 30 s.

    Raises:
        pytest.UsageError: the value is not a positive number of seconds; the
            message names ``--forksafe-timeout`` or the ini file.
    """
    option = config.getoption("--forksafe-timeout")
    if option is not None:
        where, value = "--forksafe-timeout", option
    else:
        where = f"forksafe_timeout in {config.inipath or 'the ini file'}"
        value = config.getini("forksafe_timeout")
    seconds = _seconds(value)
    if seconds is None:
        raise pytest.UsageError(f"{where}: must be a positive number of seconds, got {value!r}")
    return seconds


def _marker_timeout(item: pytest.Item) -> float | None:
    """The marker's timeout (``None``: the default), or a setup error naming the test."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return None
    where = f"{item.nodeid}: @pytest.mark.{MARKER}"
    if item.get_closest_marker("forked") is not None:
        pytest.fail(
            f"{where} and @pytest.mark.forked (pytest-forked) both run the test in a forked "
            f"child, so it would be forked twice; keep one ({MARKER} adds a timeout and the "
            "child's stacks)",
            pytrace=False,
        )
    unknown = sorted(set(marker.kwargs) - {"timeout"})
    if unknown or len(marker.args) > 1 or (marker.args and "timeout" in marker.kwargs):
        pytest.fail(
            f"{where}: takes one argument, timeout (seconds); got args={marker.args!r}, "
            f"kwargs={marker.kwargs!r}",
            pytrace=False,
        )
    value = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is None:
        pytest.fail(
            f"{where}: timeout must be a positive number of seconds, got {value!r}",
            pytrace=False,
        )
    return seconds


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check the marker's arguments before any fixture is set up."""
    _marker_timeout(item)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run tests marked ``run_in_fork`` in a forked child; fixtures are set up in the parent."""
    if pyfuncitem.get_closest_marker(MARKER) is None:
        return None
    from forksafe import testing

    timeout = _marker_timeout(pyfuncitem)
    if timeout is None:
        timeout = default_timeout(pyfuncitem.config)
    names = pyfuncitem._fixtureinfo.argnames
    body = functools.partial(pyfuncitem.obj, **{n: pyfuncitem.funcargs[n] for n in names})
    __tracebackhide__ = True
    testing.run_in_fork(body, timeout=timeout)
    return True


def _with_default(name: str, config: pytest.Config) -> Callable[..., Any]:
    from forksafe import testing

    run = getattr(testing, name)
    default = default_timeout(config)

    @functools.wraps(run)
    def bounded(*args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        return run(*args, timeout=default if timeout is None else timeout, **kwargs)

    return bounded


@pytest.fixture
def run_in_fork(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run_in_fork(fn, *args, timeout=None, **kwargs)``: ``fn`` in a forked child."""
    return _with_default("run_in_fork", request.config)


@pytest.fixture
def run_in_subprocess(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``run_in_subprocess(fn, *args, timeout=None, **kwargs)``: ``fn`` in a fresh interpreter."""
    return _with_default("run_in_subprocess", request.config)


@pytest.fixture
def assert_fork_safe(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``assert_fork_safe(target, *, import_first=None, timeout=None)``."""
    return _with_default("assert_fork_safe", request.config)


@pytest.fixture
def tiny_model(tmp_path: Any) -> Callable[..., Any]:
    """Factory: build a tiny Keras model *in this process*, saved in ``tmp_path``.

    Returns a ``(model, TinyModel)`` pair. Building starts the framework
    runtime in the test process; to fork afterwards, use ``tiny_model_path``.
    """
    from forksafe import testing

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
    from forksafe import testing

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
    exit and no shared-memory segment made by this process, its descendants or
    those hosts may be left; otherwise the test errors. Other processes' (another
    application's, another pytest-xdist worker's) do not count.
    """
    import forksafe
    from forksafe import testing

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

    def leaked() -> tuple[list[int], list[str]]:
        # Only this test's own: its hosts, and the segments made by this process,
        # its live descendants or its hosts (a name without a creator counts too).
        # Another application's or pytest-xdist worker's come and go meanwhile.
        ours = testing.process_tree({os.getpid()} | hosts)
        segments = [
            name
            for name in testing.shm_segments() - segments_before
            if testing.segment_creator(name) in ours | {None}
        ]
        return sorted(hosts & testing.host_processes()), sorted(segments)

    if not testing.wait_until(lambda: leaked() == ([], []), 5.0):
        leaked_hosts, leaked_segments = leaked()
        raise AssertionError(
            f"forksafe_proxy: leaked after the test: host processes {leaked_hosts}, "
            f"shared-memory segments {leaked_segments}; {alive} proxy(ies) still "
            "referenced (a global, a cache, a cycle?)"
        )
