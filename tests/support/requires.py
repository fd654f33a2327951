"""The one way a test says what it needs from the machine: a package or a service.

Something missing skips the test with a reason naming it and how to get it;
under ``CI=true`` it fails instead, since CI installs and starts everything
the suite needs. A skip for any other reason (the platform, the backend of
this run) says so in its reason. No module calls ``pytest.importorskip`` or
skips for a missing package or service any other way (see
``tests/unit/test_suite_rules.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
from types import ModuleType
from urllib.parse import urlparse

import pytest

__all__ = [
    "AMQP_URL",
    "CI_FLAG",
    "REDIS_URL",
    "installed",
    "missing",
    "optional_package",
    "optional_service",
    "package",
    "redis_url",
    "service",
]

CI_FLAG = "CI"  # CI=true: what is missing fails instead of skipping
REDIS_URL = os.environ.get("FORKSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("FORKSAFE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def missing(message: str) -> None:
    """Skip (fail under ``CI=true``) because ``message`` names something this machine lacks."""
    __tracebackhide__ = True
    if os.environ.get(CI_FLAG) == "true":
        pytest.fail(f"{message} (CI=true: CI must provide it)", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def package(name: str, install: str | None = None) -> ModuleType:
    """Import ``name``, or skip (fail under CI) saying what to install."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"needs {name} (pip install {install or name.split('.')[0]}): {exc}")
        raise  # not reached: missing() always raises


def installed(name: str, install: str | None = None) -> None:
    """Skip (fail under CI) unless ``name`` is importable; it is not imported here."""
    __tracebackhide__ = True
    try:
        found = importlib.util.find_spec(name) is not None
    except ImportError:  # a dotted name whose parent package is missing
        found = False
    if not found:
        missing(f"needs {name} (pip install {install or name.split('.')[0]})")


def _refused(url: str) -> OSError | None:
    """Why nothing answers at ``url``'s host and port; ``None`` when something listens."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
            return None
    except OSError as exc:
        return exc


def service(url: str, what: str | None = None) -> str:
    """``url`` if something listens at its host and port, else skip (fail under CI)."""
    __tracebackhide__ = True
    refused = _refused(url)
    if refused is not None:
        missing(f"{what or urlparse(url).scheme} not reachable at {url}: {refused}")
    return url


def optional_package(name: str) -> bool:
    """Whether ``name`` is importable, for a test that does less without it; under CI it fails."""
    __tracebackhide__ = True
    if importlib.util.find_spec(name) is not None:
        return True
    if os.environ.get(CI_FLAG) == "true":
        missing(f"needs {name} (pip install {name})")
    return False


def optional_service(url: str, what: str) -> bool:
    """Whether something listens at ``url``, for a test that does less without it; CI fails."""
    __tracebackhide__ = True
    if os.environ.get(CI_FLAG) == "true":
        service(url, what)
    return _refused(url) is None


def redis_url() -> str:
    """The test Redis (``FORKSAFE_TEST_REDIS_URL``), or skip (fail under CI)."""
    __tracebackhide__ = True
    return service(REDIS_URL, "Redis")
