"""An RQ worker that imports the job module once, before forking a work horse per job.

RQ's docs advise preloading this way; with forksafe the import loads nothing.
Run: python worker.py   (REDIS_URL, RQ_QUEUE and MODEL_PATH from the environment)
"""

import os

import jobs  # noqa: F401  (the preload: every horse inherits the imported module)
from redis import Redis
from rq import Queue, Worker

if __name__ == "__main__":
    connection = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue = Queue(os.environ.get("RQ_QUEUE", "predictions"), connection=connection)
    print("worker ready", flush=True)
    Worker([queue], connection=connection).work()
