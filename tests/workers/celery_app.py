"""The Celery app the worker tests run: the original report's shape, fixed with one line.

Configured from the environment (the worker is a subprocess): FS_BROKER,
FS_BACKEND, FS_FS_DIR (filesystem broker), FS_MODEL, FS_PARENT_RUNS_TF=1 (the
original report's import-time load and predict, in the worker's parent),
FS_WARM=1 (forksafe.celery.install). ``fs.injected`` takes its model from
``@forksafe.inject`` instead of the module-level proxy.
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

# The one-line fix, MODEL = forksafe.load_model(...), and with FS_PARENT_RUNS_TF=1 what
# the original report did at import (it runs in the worker's parent): see ``served``.
from tests.workers.served import MODEL, answer

app = configure(Celery("forksafe_tests"), os.environ)

if os.environ.get("FS_WARM") == "1":
    forksafe.celery.install(app, warm=[MODEL])


@app.task(name="fs.predict")
def predict(rows: list[list[float]]) -> dict[str, Any]:
    """Predict and report which process answered and how it holds the model."""
    return answer(rows)


@app.task(name="fs.injected")
@forksafe.inject(model=os.environ.get("FS_MODEL", "model.keras"))
def injected(rows: list[list[float]], model: forksafe.ModelProxy) -> dict[str, Any]:
    """Predict with the model ``forksafe.inject`` hands this process; report as ``predict``."""
    info = forksafe.info(model)
    y = model.predict_on_batch(np.asarray(rows, "float32"))
    return {
        "pid": os.getpid(),
        "y": np.asarray(y).tolist(),
        "loads": forksafe.info(model).loads,
        "in_effect": forksafe.info(model).in_effect,
        "loaded_before": info.loaded,  # the injected model never came loaded from the parent
    }


@app.task(name="fs.slow_predict")
def slow_predict(rows: list[list[float]], marker: str) -> dict[str, Any]:
    """Write this process's pid to ``marker`` (first delivery only), wait, then predict."""
    if not os.path.exists(marker):
        with open(marker, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        time.sleep(30)
    return predict(rows)
