"""The dramatiq app: a Redis broker with results, a module-level proxy (``served``), an actor.

``dramatiq tests.workers.dramatiq_app:broker`` starts worker processes that
each import this module (the main process never does). FS_QUEUE is the
broker's and the results' Redis namespace, FS_BROKER the Redis URL. A client
calls ``make(name, url)`` to send to the same namespace.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from tests.workers.served import answer


def predict(rows: list[list[float]]) -> dict[str, Any]:
    """The actor: predict ``rows`` in whichever worker thread runs it."""
    return answer(rows)


def make(name: str, url: str) -> tuple[RedisBroker, RedisBackend, Any]:
    """A broker and result backend in namespace ``name`` on ``url``, and the actor."""
    backend = RedisBackend(url=url, namespace=f"{name}-results")
    broker = RedisBroker(url=url, namespace=name)
    broker.add_middleware(Results(backend=backend))
    actor = dramatiq.actor(predict, broker=broker, actor_name="predict", store_results=True)
    return broker, backend, actor


broker, backend, predict_actor = make(
    os.environ.get("FS_QUEUE", "fs-dramatiq-unset"),
    os.environ.get("FS_BROKER", "redis://127.0.0.1:6379/0"),
)
dramatiq.set_broker(broker)
