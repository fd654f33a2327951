"""The Celery app behind ``forksafe demo`` (configured from the environment).

FORKSAFE_DEMO_NAIVE=1 gives the original report's module: a Keras model loaded,
and warmed up, at import time. Otherwise the one-line fix: a forksafe proxy.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from celery import Celery

import forksafe

app = Celery(
    "forksafe_demo",
    broker=os.environ["FORKSAFE_DEMO_BROKER"],
    backend=os.environ["FORKSAFE_DEMO_BACKEND"],
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
)
if os.environ["FORKSAFE_DEMO_BROKER"].startswith("filesystem"):
    from forksafe._cli import demo_transport_options

    app.conf.broker_transport_options = demo_transport_options(os.environ["FORKSAFE_DEMO_FOLDER"])

if os.environ.get("FORKSAFE_DEMO_NAIVE") == "1":
    import keras

    MODEL: Any = keras.models.load_model(os.environ["FORKSAFE_DEMO_MODEL"])
    MODEL.predict(np.zeros((1, 4), "float32"), verbose=0)  # a warm-up, as services do
else:
    MODEL = forksafe.load_model(os.environ["FORKSAFE_DEMO_MODEL"])


@app.task(name="forksafe_demo.predict")  # type: ignore[untyped-decorator]
def predict(rows: list[list[float]]) -> dict[str, Any]:
    """One prediction, timed, with the answering process."""
    start = time.perf_counter()
    y = np.asarray(MODEL.predict(np.asarray(rows, "float32"), verbose=0))
    loads = forksafe.info(MODEL).loads if isinstance(MODEL, forksafe.ModelProxy) else None
    return {
        "pid": os.getpid(),
        "loads": loads,
        "ms": (time.perf_counter() - start) * 1e3,
        "sum": float(y.sum()),
    }
