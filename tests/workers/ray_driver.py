"""A Ray driver that ships one proxy every way users do; prints what the workers answered.

    python -m tests.workers.ray_driver ADDRESS MODEL LOAD_LOG

As a task argument, through the object store (``ray.put``), in a closure,
to an actor, and as a constructor argument of a Ray Data ``map_batches``
class.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from tests.models import Models
from tests.workers.engines import answer, counted_model, driver_facts, emit

TASKS = 4


class Scorer:
    """An actor holding the model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def score(self, x: Any) -> dict[str, Any]:
        return answer(self.model, x)


class BatchScorer:
    """A Ray Data callable class: one answer per batch."""

    def __init__(self, model: Any, x: Any) -> None:
        self.model = model
        self.x = x

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {"answer": np.asarray([json.dumps(answer(self.model, self.x))] * len(batch["id"]))}


def main() -> int:
    """Run every usage on the cluster at ``argv[1]``."""
    import ray

    address, path, log = sys.argv[1:4]
    x, _ = Models(os.path.dirname(path)).reference()
    model = counted_model(path, log)
    # Ray rewrites a 127.0.0.1 address to the interface it would reach others from:
    # the same loopback address given as this node's keeps everything on it.
    ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
    remote_answer = ray.remote(answer)
    results: dict[str, list[dict[str, Any]]] = {}
    results["argument"] = ray.get([remote_answer.remote(model, x) for _ in range(TASKS)])
    ref = ray.put(model)
    results["object_store"] = ray.get([remote_answer.remote(ref, x) for _ in range(TASKS)])
    closure = ray.remote(lambda: answer(model, x))
    results["closure"] = ray.get([closure.remote() for _ in range(TASKS)])
    actor = ray.remote(Scorer).remote(model)
    results["actor"] = ray.get([actor.score.remote(x) for _ in range(TASKS)])
    ray.kill(actor)
    import ray.data

    data = ray.data.range(TASKS * 2, override_num_blocks=TASKS)
    scored = data.map_batches(
        BatchScorer,
        fn_constructor_args=(model, x),
        batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=1),
    )
    results["ray_data"] = [json.loads(row["answer"]) for row in scored.take_all()]
    facts = driver_facts(model)
    ray.shutdown()
    emit({"results": results, "driver": facts})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
