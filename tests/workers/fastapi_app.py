"""The FastAPI app: async and sync endpoints over one module-level proxy (see ``served``).

Served by ``gunicorn -k uvicorn_worker.UvicornWorker`` (with or without
``--preload``) and by ``uvicorn --workers``. The async endpoint hands
``predict`` to the thread pool, as an async app must (a blocking call on the
event loop would stall every other request); a plain ``def`` endpoint runs in
that pool by itself.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from tests.workers.served import answer

app = FastAPI()


class Rows(BaseModel):
    """The request body."""

    rows: list[list[float]]


@app.post("/predict")
async def predict(body: Rows) -> dict[str, Any]:
    """Predict in the thread pool; the event loop keeps serving meanwhile."""
    return await run_in_threadpool(answer, body.rows)


@app.post("/predict_sync")
def predict_sync(body: Rows) -> dict[str, Any]:
    """A plain endpoint: FastAPI runs it in the thread pool."""
    return answer(body.rows)
