"""forksafe's exceptions are named where users import them from, and survive pickling."""

from __future__ import annotations

import pickle
import subprocess
import sys
import traceback

import pytest

import forksafe
from tests.support import requires

PUBLIC = (
    forksafe.ForkSafeError,
    forksafe.ModelLoadError,
    forksafe.InheritedRuntimeError,
    forksafe.HostError,
    forksafe.HostCrashedError,
    forksafe.HostTimeoutError,
)


@pytest.mark.parametrize("kind", PUBLIC, ids=lambda kind: kind.__name__)
def test_a_traceback_names_the_public_class_and_a_pickle_comes_back(kind: type) -> None:
    """``forksafe.HostError: ...`` in a traceback (not a private module); pickle finds it."""
    error = kind("what was wrong")
    assert traceback.format_exception_only(error) == [f"forksafe.{kind.__name__}: what was wrong\n"]
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is kind and str(back) == "what was wrong"


def test_the_warning_is_named_where_it_is_imported_from() -> None:
    """``warnings`` prints ``ForkSafeWarning``'s class by its public module too."""
    assert f"{forksafe.ForkSafeWarning.__module__}.ForkSafeWarning" == "forksafe.ForkSafeWarning"


def test_errors_pickle_with_tblib_installed_as_dask_does() -> None:
    """Dask installs tblib's exception pickling: every error still travels, notes and all."""
    code = """
import pickle
from tblib import pickling_support
import forksafe
pickling_support.install()
for kind in (forksafe.HostTimeoutError, forksafe.ModelLoadError, forksafe.HostCrashedError):
    error = kind("what was wrong")
    error.add_note("a note")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is kind and str(back) == "what was wrong", back
    assert back.__notes__ == ["a note"], back.__notes__
print("ok")
"""
    requires.package("tblib")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
