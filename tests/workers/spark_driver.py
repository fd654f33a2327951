"""A PySpark ``local[2]`` driver that ships one proxy every way users do; prints the answers.

    python -m tests.workers.spark_driver MODEL LOAD_LOG REUSE

In an RDD closure, as a broadcast variable, to ``mapInPandas`` and to a
``pandas_udf``; ``REUSE`` is ``spark.python.worker.reuse`` (``true``: the
daemon's workers serve many tasks; ``false``: a fresh fork per task).
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import pandas as pd

from tests.models import Models
from tests.workers.engines import answer, counted_model, driver_facts, emit

PARTITIONS = 4


def main() -> int:
    """Run every usage in a local[2] session."""
    from pyspark.sql import SparkSession

    path, log, reuse = sys.argv[1:4]
    x, _ = Models(os.path.dirname(path)).reference()
    rows = x.tolist()
    model = counted_model(path, log)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("forksafe-test")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.python.worker.reuse", reuse)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    try:
        sc = spark.sparkContext
        results: dict[str, list[dict[str, Any]]] = {}
        count = PARTITIONS if reuse == "true" else 2  # no reuse: a load per task
        parts = sc.parallelize(range(count), count)
        results["closure"] = parts.map(lambda _: answer(model, x)).collect()
        shared = sc.broadcast(model)
        results["broadcast"] = parts.map(lambda _: answer(shared.value, x)).collect()
        if reuse == "false":  # a fresh worker (and load) per task: enough to show it
            return finish(results, model)
        frame = spark.createDataFrame(
            [(p, i, *row) for p in range(PARTITIONS) for i, row in enumerate(rows)],
            ["p", "i", "a", "b", "c", "d"],
        ).repartition(PARTITIONS, "p")

        def score_frames(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for batch in frames:
                for _, group in batch.groupby("p"):  # one answer per reference batch
                    group = group.sort_values("i")  # a shuffle keeps no order
                    got = answer(model, group[["a", "b", "c", "d"]].to_numpy("float32"))
                    yield pd.DataFrame({"answer": [json.dumps(got)]})

        scored = frame.mapInPandas(score_frames, "answer string").collect()
        results["map_in_pandas"] = [json.loads(r["answer"]) for r in scored]
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("string")
        def score_series(p: pd.Series) -> pd.Series:
            return pd.Series([json.dumps(answer(model, x))] * len(p))

        scored = frame.select("p").distinct().select(score_series("p").alias("answer")).collect()
        results["pandas_udf"] = [json.loads(r["answer"]) for r in scored]
        return finish(results, model)
    finally:
        spark.stop()


def finish(results: dict[str, list[dict[str, Any]]], model: Any) -> int:
    """Print the answers and the driver's facts."""
    emit({"results": results, "driver": driver_facts(model)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
