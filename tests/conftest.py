"""Shared fixtures: the tiny model files, built once per session in a clean process."""

from __future__ import annotations

import os

import pytest

from tests.helpers import run_clean
from tests.models import Models, build_all

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Every model format with its reference data, built outside the test process."""
    directory = str(tmp_path_factory.mktemp("models"))
    return run_clean(build_all, directory, timeout=180).get()  # type: ignore[no-any-return]
