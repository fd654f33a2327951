"""What the servers benchmark runs: one module as an RQ job module, a WSGI app and an ASGI app.

FSB_MODEL: the model file. FSB_NAIVE=1: the pattern of the bug reports, a
bare ``keras.models.load_model`` and a warm-up ``predict`` at import;
otherwise ``forksafe.load_model`` with FSB_ISOLATION (default ``auto``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

import forksafe

if os.environ.get("FSB_NAIVE") == "1":
    import keras

    MODEL: Any = keras.models.load_model(os.environ["FSB_MODEL"])
    MODEL.predict(np.zeros((1, 4), "float32"), verbose=0)
else:
    MODEL = forksafe.load_model(
        os.environ.get("FSB_MODEL", "unset.keras"),
        isolation=os.environ.get("FSB_ISOLATION", "auto"),
    )


_held: dict[int, tuple[int, str]] = {}  # per process: loads and where the model runs


def predict(rows: list[list[float]], describe: bool = True) -> dict[str, Any]:
    """One prediction (an RQ job; the body of both apps): its answer and who gave it.

    ``describe=False`` leaves out how the model is held (RQ's timed jobs: each runs in a
    new horse, where ``info`` would ask a shared host for its figures every time).
    """
    y = np.asarray(MODEL.predict_on_batch(np.asarray(rows, "float32")))
    pid = os.getpid()
    if not describe:
        return {"pid": pid, "y": y.tolist()}
    if pid not in _held:
        # Asked once per process: info() of a shared proxy also asks the host for its figures.
        info = forksafe.info(MODEL) if isinstance(MODEL, forksafe.ModelProxy) else None
        _held[pid] = (info.loads, str(info.in_effect)) if info else (1, "bare")
    loads, in_effect = _held[pid]
    return {"pid": pid, "y": y.tolist(), "loads": loads, "in_effect": in_effect}


def noop() -> int:
    """A job that does not touch the model: what RQ's horse per job costs by itself."""
    return os.getpid()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI app (uWSGI, gunicorn): POST {"rows": ...} to any path."""
    size = int(environ.get("CONTENT_LENGTH") or 0)
    rows = json.loads(environ["wsgi.input"].read(size))["rows"]
    body = json.dumps(predict(rows)).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


asgi = FastAPI()


@asgi.post("/predict")
async def predict_endpoint(request: Request) -> dict[str, Any]:
    """The ASGI app (gunicorn with uvicorn workers): predict in the thread pool."""
    rows = (await request.json())["rows"]
    return await run_in_threadpool(predict, rows)


def rq_worker() -> None:
    """An RQ worker that preloaded this module (FSB_BROKER, FSB_QUEUE; FSB_RQ=simple)."""
    import logging
    import sys

    from redis import Redis
    from rq import Queue, SimpleWorker, Worker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    connection = Redis.from_url(os.environ["FSB_BROKER"])
    kind = SimpleWorker if os.environ.get("FSB_RQ") == "simple" else Worker
    queue = Queue(os.environ["FSB_QUEUE"], connection=connection)
    worker = kind([queue], connection=connection, name=f"{os.environ['FSB_QUEUE']}-{os.getpid()}")
    if os.environ.get("FSB_HOLD") == "1":  # the worker keeps the shared host (see the RQ guide)
        predict(np.zeros((1, 4), "float32").tolist())
    print("servers benchmark: rq worker ready", file=sys.stderr, flush=True)
    worker.work(logging_level="WARNING")


if __name__ == "__main__":
    rq_worker()
