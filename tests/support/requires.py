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
    "REDIS_URL",
    "installed",
    "missing",
    "package",
    "redis_url",
    "service",
]

REDIS_URL = os.environ.get("FORKSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("FORKSAFE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def missing(message: str) -> None:
    """Skip (fail under ``CI=true``) because ``message`` names something this machine lacks."""
    __tracebackhide__ = True
    if os.environ.get("CI") == "true":
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
    if importlib.util.find_spec(name) is None:
        missing(f"needs {name} (pip install {install or name})")


def service(url: str, what: str | None = None) -> str:
    """``url`` if something listens at its host and port, else skip (fail under CI)."""
    __tracebackhide__ = True
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port), timeout=2):
            return url
    except OSError as exc:
        missing(f"{what or parsed.scheme} not reachable at {url}: {exc}")
        raise  # not reached


def redis_url() -> str:
    """The test Redis (``FORKSAFE_TEST_REDIS_URL``), or skip (fail under CI)."""
    __tracebackhide__ = True
    return service(REDIS_URL, "Redis")
