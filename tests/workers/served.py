"""The model every served test app holds (RQ, dramatiq, huey, FastAPI, uWSGI) and its answer.

Configured from the environment, as the server imports the app: FS_MODEL
(the model file), FS_ISOLATION (default ``auto``), FS_PARENT_RUNS_TF=1 (the
report's import-time ``load_model`` and ``predict`` with plain Keras: where
the server imports the app before forking, its master ran TensorFlow).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import forksafe

MODEL = forksafe.load_model(
    os.environ.get("FS_MODEL", "unset.keras"), isolation=os.environ.get("FS_ISOLATION", "auto")
)

if os.environ.get("FS_PARENT_RUNS_TF") == "1":
    import keras

    keras.models.load_model(os.environ["FS_MODEL"]).predict(np.zeros((1, 4), "float32"), verbose=0)


def answer(rows: list[list[float]]) -> dict[str, Any]:
    """Predict ``rows``; say which process answered, how often it loaded, and where it ran."""
    y = MODEL.predict_on_batch(np.asarray(rows, "float32"))
    info = forksafe.info(MODEL)
    return {
        "pid": os.getpid(),
        "y": np.asarray(y).tolist(),
        "loads": info.loads,
        "in_effect": info.in_effect,
        "host_pid": info.host_pid,
    }
