"""The Celery app ``benchmarks.celery_pools`` runs: a mixed preprocessing + predict task.

Configured from the environment: FSB_BROKER, FSB_BACKEND, FSB_MODEL, and
FSB_HOLD: ``proxy`` (``forksafe.load_model`` + ``forksafe.celery.install``),
``proxy-poisoned`` (the same, in a master that also runs a TensorFlow op at
import) or ``plain`` (the original report's ``keras.models.load_model`` at import:
the thread-pool workaround; with prefork it would hang).
"""

from __future__ import annotations

import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from celery import Celery

import forksafe
import forksafe.celery

app = Celery("forksafe_bench")
app.conf.update(
    broker_url=os.environ.get("FSB_BROKER", "redis://127.0.0.1:6379/14"),
    result_backend=os.environ.get("FSB_BACKEND", "redis://127.0.0.1:6379/14"),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)

_PATH = os.environ.get("FSB_MODEL", "unset.keras")
_HOLD = os.environ.get("FSB_HOLD", "proxy")
if _HOLD == "plain":
    import keras

    MODEL: Any = keras.models.load_model(_PATH)
else:
    MODEL = forksafe.load_model(_PATH)
    forksafe.celery.install(app, warm=[MODEL])
    if _HOLD == "proxy-poisoned":
        # The master runs TensorFlow at import, as many apps do by accident:
        # every prefork child then needs a host.
        import keras

        keras.ops.convert_to_tensor(np.ones(2)) + 1.0


def preprocess(seed: int) -> np.ndarray[Any, Any]:
    """64 raw signals → 64 features each, the way hand-written feature code does it.

    Per record: a numpy FFT, then Python-level work over the 64 bins
    (smoothing and peak flags), as services do before a model; then the batch
    is standardised with numpy.
    """
    raw = np.random.default_rng(seed).standard_normal((64, 1024)).astype("float32")
    rows = []
    for signal in raw:
        bins = np.log1p(np.abs(np.fft.rfft(signal))[:66]).tolist()
        smooth = [(bins[i - 1] + 2 * bins[i] + bins[i + 1]) / 4 for i in range(1, 65)]
        peaks = [
            1.0 if bins[i] > bins[i - 1] and bins[i] > bins[i + 1] else 0.0 for i in range(1, 65)
        ]
        rows.append([s + 0.1 * p for s, p in zip(smooth, peaks, strict=True)])
    features = np.asarray(rows, dtype="float32")
    return ((features - features.mean(axis=0)) / (features.std(axis=0) + 1e-6)).astype("float32")


def postprocess(logits: np.ndarray[Any, Any]) -> list[dict[str, list[Any]]]:
    """Softmax, then the top 3 labels and scores of each row, as plain Python."""
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :3]
    return [
        {"labels": [int(i) for i in row], "scores": [round(float(probs[r, i]), 4) for i in row]}
        for r, row in enumerate(top)
    ]


@app.task(name="bench.classify")
def classify(seed: int) -> dict[str, Any]:
    """Preprocess, predict, postprocess; report when and where it finished."""
    rows = postprocess(np.asarray(MODEL.predict_on_batch(preprocess(seed))))
    return {"pid": os.getpid(), "done_at": time.time(), "rows": rows}
