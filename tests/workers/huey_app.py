"""The huey app: a module-level proxy (see ``served``) and a task that predicts.

``huey_consumer tests.workers.huey_app.huey`` imports this module in the
consumer, which then forks its ``-k process`` workers. FS_QUEUE names the
huey instance (its Redis keys), FS_BROKER is the Redis URL. A client calls
``make(name, url)`` to enqueue into the same instance.
"""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

from tests.workers.served import answer


def predict(rows: list[list[float]]) -> dict[str, Any]:
    """The task: predict ``rows`` in whichever process runs it."""
    return answer(rows)


def make(name: str, url: str) -> tuple[RedisHuey, Any]:
    """A huey instance on Redis ``url`` named ``name``, and its ``predict`` task."""
    instance = RedisHuey(name, url=url)
    return instance, instance.task()(predict)


huey, predict_task = make(
    os.environ.get("FS_QUEUE", "fs-huey-unset"),
    os.environ.get("FS_BROKER", "redis://127.0.0.1:6379/0"),
)
