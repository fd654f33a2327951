"""A Flask app served by gunicorn and uWSGI in the tests: one module-level proxy.

FS_MODEL: the model; FS_PARENT_RUNS_TF=1: load and predict with plain Keras
at import (with --preload, or uWSGI without lazy-apps, that happens in the
master); see ``served``.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

from tests.workers.served import MODEL, answer

app = Flask(__name__)
__all__ = ["MODEL", "app"]


@app.post("/predict")
def predict() -> object:
    """Predict the posted rows; say which process answered and how."""
    return jsonify(answer(request.get_json()["rows"]))
