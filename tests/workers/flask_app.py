"""A Flask app served by gunicorn in the tests: one module-level proxy.

FS_MODEL: the model; FS_PARENT_RUNS_TF=1: load and predict with plain Keras
at import (with --preload that happens in gunicorn's master).
"""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, jsonify, request

import forksafe

app = Flask(__name__)
MODEL = forksafe.load_model(os.environ["FS_MODEL"])

if os.environ.get("FS_PARENT_RUNS_TF") == "1":
    import keras

    keras.models.load_model(os.environ["FS_MODEL"]).predict(np.zeros((1, 4), "float32"))


@app.post("/predict")
def predict() -> object:
    """Predict the posted rows; say which process answered and how."""
    rows = np.asarray(request.get_json()["rows"], "float32")
    y = MODEL.predict_on_batch(rows)
    info = forksafe.info(MODEL)
    return jsonify(
        pid=os.getpid(), y=np.asarray(y).tolist(), loads=info.loads, in_effect=info.in_effect
    )
