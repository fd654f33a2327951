"""A Flask app whose model is shared safely by gunicorn workers."""

import os

import numpy as np
from flask import Flask, jsonify, request

import forksafe

app = Flask(__name__)
MODEL = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))


@app.post("/predict")
def predict():
    rows = np.asarray(request.get_json()["rows"], "float32")
    return jsonify(pid=os.getpid(), y=MODEL.predict_on_batch(rows).tolist())
