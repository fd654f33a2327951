"""An RQ worker that imports the job module once, before forking a work horse per job.

RQ's docs advise preloading this way; with forksafe the import loads nothing.
One call before working makes the worker a client of the shared host, so the host
lives as long as the worker, however far apart the jobs (and their horses) are.
Run: python worker.py   (REDIS_URL, RQ_QUEUE and MODEL_PATH from the environment)
"""

import os

import jobs  # the preload: every horse inherits the imported module
import numpy as np
from redis import Redis
from rq import Queue, Worker

if __name__ == "__main__":
    connection = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue = Queue(os.environ.get("RQ_QUEUE", "predictions"), connection=connection)
    # Starts the shared host (or joins it) and keeps it: no framework runs here.
    jobs.MODEL.predict_on_batch(np.zeros((1, *jobs.MODEL.input_shape[1:]), "float32"))
    print("worker ready", flush=True)
    Worker([queue], connection=connection).work()
