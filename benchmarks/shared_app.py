"""The worker code ``benchmarks.shared`` serves from Celery prefork or gunicorn sync workers.

Configured from the environment: FSB_SERVER (``celery`` or ``gunicorn``:
which app this module builds), FSB_MODEL, FSB_ISOLATION (``inprocess`` or
``shared``; or ``litserve``: the model is a separate LitServe server at
FSB_LITSERVE_PORT, ``benchmarks/litserve_app.py``), FSB_MAX_BATCH and
FSB_MAX_WAIT_MS (``shared`` only; unset: the library's defaults), FSB_BROKER.
Both apps do the same for each request: its rows → ``predict_on_batch`` →
softmax and top 3 per row as plain Python, answered with the worker's pid,
where the model runs, the shared host's pid, whether this worker imported
TensorFlow, and the request's first number (which request it answered, for
the check against the bare model). Nothing loads at import: the first
request does.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import forksafe

_ISOLATION = os.environ.get("FSB_ISOLATION", "inprocess")
# Only the options set are passed: unset, the library's defaults hold.
_BATCHING: dict[str, Any] = {}
if "FSB_MAX_BATCH" in os.environ:
    _BATCHING["max_batch"] = int(os.environ["FSB_MAX_BATCH"])
if "FSB_MAX_WAIT_MS" in os.environ:
    _BATCHING["max_wait_ms"] = float(os.environ["FSB_MAX_WAIT_MS"])


class LitServeModel:
    """``predict_on_batch`` through a LitServe server over HTTP (one connection per process)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Any = None
        self.pid = 0

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """The server's logits for the rows of ``x``."""
        import http.client
        import json

        body = json.dumps({"rows": x.tolist()}).encode()
        for attempt in (1, 2):
            if self.conn is None or self.pid != os.getpid():  # a prefork child: its own
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
                self.pid = os.getpid()
            try:
                self.conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed an idle keep-alive connection: a new one, once.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"LitServe answered HTTP {response.status}: {data[:300]!r}")
        return np.asarray(json.loads(data)["logits"], dtype="float32")


MODEL: Any
if _ISOLATION == "litserve":
    MODEL = LitServeModel(int(os.environ["FSB_LITSERVE_PORT"]))
else:
    MODEL = forksafe.load_model(
        os.environ.get("FSB_MODEL", "unset.keras"), isolation=_ISOLATION, **_BATCHING
    )


def answer(rows: list[list[float]]) -> dict[str, Any]:
    """Predict ``rows``; the top 3 labels of each, and who answered how."""
    logits = np.asarray(MODEL.predict_on_batch(np.asarray(rows, dtype="float32")))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = exp / exp.sum(axis=1, keepdims=True)
    info = forksafe.info(MODEL) if isinstance(MODEL, forksafe.ModelProxy) else None
    return {
        "pid": os.getpid(),
        "done_at": time.time(),
        "key": rows[0][0],
        "top": [[int(i) for i in row] for row in np.argsort(-probs, axis=1)[:, :3]],
        "in_effect": info.in_effect if info is not None else "litserve",
        "host_pid": info.host_pid if info is not None else None,
        "tensorflow": "tensorflow" in sys.modules,
    }


app: Any
if os.environ.get("FSB_SERVER") == "celery":
    from celery import Celery

    app = Celery("forksafe_bench_shared")
    app.conf.update(
        broker_url=os.environ.get("FSB_BROKER", "redis://127.0.0.1:6379/14"),
        result_backend=os.environ.get("FSB_BROKER", "redis://127.0.0.1:6379/14"),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        result_expires=600,
    )

    @app.task(name="bench.shared_predict")
    def predict(rows: list[list[float]]) -> dict[str, Any]:
        """One request: ``answer(rows)``."""
        return answer(rows)

else:
    from flask import Flask, jsonify, request

    app = Flask(__name__)

    @app.post("/predict")
    def predict_http() -> Any:
        """One request: ``answer`` of the posted rows."""
        return jsonify(answer(request.get_json()["rows"]))
