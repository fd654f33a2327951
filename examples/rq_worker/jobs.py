"""RQ jobs with one model: loaded once, in a shared host, for every work horse.

RQ's default worker forks a work horse per job. Each horse is a new process:
with a plain forksafe.load_model(path) it would import TensorFlow and load the
model again for every job. isolation="shared" loads it once, in one host
process that every horse (and every worker on this machine) sends its calls to.
"""

import os

import numpy as np

import forksafe

# Was: MODEL = keras.models.load_model(...)  -- preloaded by the worker, every horse hung.
MODEL = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"), isolation="shared")


def predict(rows):
    y = MODEL.predict_on_batch(np.asarray(rows, "float32"))
    info = forksafe.info(MODEL)
    return {"horse": os.getpid(), "host": info.host_pid, "y": np.asarray(y).tolist()}
