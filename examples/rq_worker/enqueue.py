"""Enqueue a few predictions and print which horse and which host answered."""

import os
import time

from redis import Redis
from rq import Queue

if __name__ == "__main__":
    connection = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue = Queue(os.environ.get("RQ_QUEUE", "predictions"), connection=connection)
    jobs = [queue.enqueue("jobs.predict", [[0.1, 0.2, 0.3, 0.4]], result_ttl=60) for _ in range(4)]
    deadline = time.monotonic() + 300
    while not all(job.is_finished or job.is_failed for job in jobs):
        if time.monotonic() > deadline:
            raise SystemExit("the jobs did not finish within 300 s")
        time.sleep(0.1)
    for job in jobs:
        answer = job.return_value()
        print(f"horse {answer['horse']} host {answer['host']}: {answer['y']}")
        job.delete()
