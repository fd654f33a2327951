"""forksafe's warnings name the user's line, however the model was reached."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.models import Models

SCRIPT = """
import json, warnings
import numpy as np
import forksafe
from forksafe.testing import run_in_fork

MODEL = forksafe.load_model({path!r})
X = np.zeros((1, 4), "float32")
MODEL.predict_on_batch(X)  # the parent runs TensorFlow: children answer through a host
PREDICT = MODEL.predict_on_batch  # a method taken before the fork


def child(use):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if use == "method":
            PREDICT(X)  # LINE-METHOD
        elif use == "call":
            MODEL(X)  # LINE-CALL
        else:
            MODEL.predict_on_batch(X)  # LINE-ATTRIBUTE
    return [(w.category.__name__, w.filename, w.lineno) for w in caught]


print(json.dumps({{use: run_in_fork(child, use, timeout=200) for use in
                  ("method", "call", "attribute")}}))
"""


@pytest.mark.timeout(400)
@pytest.mark.keras_backend("tensorflow")
def test_the_hosted_warning_names_the_line_that_used_the_model(
    models: Models, tmp_path: Path
) -> None:
    """A method taken before a fork, a call, an attribute: each warning points at its line."""
    script = tmp_path / "app.py"
    text = textwrap.dedent(SCRIPT.format(path=models.keras))
    script.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    lines = text.splitlines()
    for use, marker in (("method", "METHOD"), ("call", "CALL"), ("attribute", "ATTRIBUTE")):
        expected = next(i for i, line in enumerate(lines, 1) if f"LINE-{marker}" in line)
        forksafe_warnings = [w for w in seen[use] if w[0] == "ForkSafeWarning"]
        assert forksafe_warnings == [["ForkSafeWarning", str(script), expected]], (use, seen)
