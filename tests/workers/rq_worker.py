"""An RQ worker that preloads its job module before it forks a work horse per job.

RQ's performance notes advise this (the import happens once, in the worker);
with forksafe the preload loads no model. FS_BROKER (Redis URL), FS_QUEUE,
FS_RQ_WORKER=simple for ``SimpleWorker`` (jobs run in the worker itself);
FS_RQ_HOLD=1: one call before working, so that a shared host lives as long as
the worker (not only while a horse uses it).
"""

from __future__ import annotations

import logging
import os
import sys

from redis import Redis
from rq import Queue, SimpleWorker, Worker

import tests.workers.rq_jobs  # the preload: every work horse inherits it


def main() -> None:
    """Work the queue until stopped (SIGTERM: a warm shutdown)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    connection = Redis.from_url(os.environ["FS_BROKER"])
    kind = SimpleWorker if os.environ.get("FS_RQ_WORKER") == "simple" else Worker
    queue = Queue(os.environ["FS_QUEUE"], connection=connection)
    worker = kind([queue], connection=connection, name=f"{os.environ['FS_QUEUE']}-{os.getpid()}")
    if os.environ.get("FS_RQ_HOLD") == "1":
        import numpy as np

        tests.workers.rq_jobs.MODEL.predict_on_batch(np.zeros((1, 4), "float32"))
    print(f"forksafe test: {kind.__name__} ready", file=sys.stderr, flush=True)
    worker.work(logging_level="INFO")


if __name__ == "__main__":
    main()
