"""The Celery app the worker tests run: the original report's shape, fixed with one line.

Configured from the environment (the worker is a subprocess): FS_BROKER,
FS_BACKEND, FS_FS_DIR (filesystem broker), FS_MODEL, FS_PARENT_RUNS_TF=1 (the
original report's import-time load and predict, in the worker's parent),
FS_WARM=1 (forksafe.celery.install).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from celery import Celery

import forksafe
import forksafe.celery
from tests.workers.celery_config import configure

app = configure(Celery("forksafe_tests"), os.environ)

MODEL = forksafe.load_model(os.environ.get("FS_MODEL", "unset.keras"))  # the one-line fix

if os.environ.get("FS_PARENT_RUNS_TF") == "1":
    import keras

    # What the original report did at import: it now runs in the worker's parent.
    keras.models.load_model(os.environ["FS_MODEL"]).predict(np.zeros((1, 4), "float32"))

if os.environ.get("FS_WARM") == "1":
    forksafe.celery.install(app, warm=[MODEL])


@app.task(name="fs.predict")
def predict(rows: list[list[float]]) -> dict[str, Any]:
    """Predict and report which process answered and how it holds the model."""
    y = MODEL.predict_on_batch(np.asarray(rows, "float32"))
    info = forksafe.info(MODEL)
    return {
        "pid": os.getpid(),
        "y": np.asarray(y).tolist(),
        "loads": info.loads,
        "in_effect": info.in_effect,
    }


@app.task(name="fs.slow_predict")
def slow_predict(rows: list[list[float]], marker: str) -> dict[str, Any]:
    """Write this process's pid to ``marker`` (first delivery only), wait, then predict."""
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        time.sleep(30)
    return predict(rows)
