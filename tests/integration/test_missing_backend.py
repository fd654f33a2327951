"""A framework the loader needs but cannot import is a ModelLoadError, in and out of process.

The environment here is one where ``import keras`` fails the way it does
when its backend is not installed (``ModuleNotFoundError: No module named
'tensorflow'``): a ``keras`` package earlier on ``sys.path`` that raises
exactly that. The model file is real.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forksafe import testing
from tests.support.children import run_python

pytestmark = pytest.mark.timeout(300)

_BROKEN_KERAS = "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n"


@pytest.mark.parametrize("isolation", ["inprocess", "process", "shared"])
def test_a_missing_backend_is_a_model_load_error(tmp_path: Path, isolation: str) -> None:
    """Not a raw ModuleNotFoundError: a ModelLoadError naming the model and what was missing."""
    tiny = testing.run_in_subprocess(testing.save_tiny_model, str(tmp_path), timeout=180)
    shadow = tmp_path / "shadow" / "keras"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(_BROKEN_KERAS)
    code = f"""
    import sys
    sys.path.insert(0, {str(shadow.parent)!r})
    import forksafe
    proxy = forksafe.load_model({tiny.path!r}, isolation={isolation!r}, timeout=60)
    try:
        proxy.predict_on_batch
    except Exception as exc:
        print(type(exc).__name__, "|", exc)
    """
    kind, _, message = run_python(code, timeout=120).partition(" | ")
    assert kind == "ModelLoadError", message
    assert tiny.path in message and "No module named 'tensorflow'" in message
