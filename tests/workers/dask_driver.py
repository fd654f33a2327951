"""A Dask client that ships one proxy every way users do; prints what the workers answered.

    python -m tests.workers.dask_driver SCHEDULER_FILE MODEL LOAD_LOG ISOLATION

As arguments of ``client.map`` and ``client.submit`` (pure: tokenized), in
a closure, scattered with ``broadcast=True``, and to
``dask.dataframe.map_partitions`` where dask.dataframe is installed.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from tests.models import Models
from tests.workers.engines import answer, counted_model, driver_facts, emit

TASKS = 4


def score_frame(frame: Any, *, model: Any) -> Any:
    """map_partitions: one answer per partition, as a one-row frame."""
    import json

    import pandas as pd

    x = frame[["a", "b", "c", "d"]].to_numpy(dtype="float32")
    return pd.DataFrame({"answer": [json.dumps(answer(model, x))]})


def main() -> int:
    """Run every usage against the scheduler in ``argv[1]``."""
    from distributed import Client

    scheduler_file, path, log, isolation = sys.argv[1:5]
    x, _ = Models(path.rsplit("/", 1)[0]).reference()
    model = counted_model(path, log, isolation)
    results: dict[str, list[dict[str, Any]]] = {}
    with Client(scheduler_file=scheduler_file, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
        results["map"] = client.gather(client.map(answer, [model] * TASKS, [x] * TASKS, pure=False))
        results["submit_pure"] = [client.submit(answer, model, x).result(timeout=120)]
        results["closure"] = client.gather(
            client.map(lambda i: answer(model, x), range(TASKS), pure=False)
        )
        shared = client.scatter(model, broadcast=True)
        results["scatter"] = client.gather(client.map(answer, [shared] * TASKS, [x] * TASKS))
        try:
            import dask.dataframe as dd
            import pandas as pd
        except ImportError:
            pass
        else:
            frame = pd.DataFrame(np.tile(x, (TASKS, 1)), columns=["a", "b", "c", "d"])
            parts = dd.from_pandas(frame, npartitions=TASKS)
            meta = pd.DataFrame({"answer": pd.Series([], dtype=object)})
            # A keyword: dask-expr reads ``.expr`` of positional extras (docs/guides/dask.md).
            out = parts.map_partitions(score_frame, model=model, meta=meta).compute()
            import json

            results["map_partitions"] = [json.loads(a) for a in out["answer"]]
        workers = sorted(
            info["pid"] for info in client.run(lambda: {"pid": __import__("os").getpid()}).values()
        )
    emit({"results": results, "workers": workers, "driver": driver_facts(model)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
