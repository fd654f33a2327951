"""The original report's tasks module (Django/Celery/Redis/Keras), fixed with one line."""

import os

import numpy as np
from celery import Celery

import forksafe

BROKER = os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0")
app = Celery("tasks", broker=BROKER, backend=BROKER)
app.conf.broker_connection_retry_on_startup = True

# Was: MODEL = keras.models.load_model(...)  -- prefork workers hung on predict.
MODEL = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))


@app.task
def predict(rows):
    return {"pid": os.getpid(), "y": MODEL.predict(np.asarray(rows, "float32")).tolist()}
