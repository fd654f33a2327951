"""A proxy in PySpark closures, mapInPandas and a pandas_udf: one load per worker, none here.

python examples/make_model.py /tmp/model.keras
MODEL_PATH=/tmp/model.keras python examples/spark_partitions.py
"""

import os
import sys
from collections.abc import Iterator

import numpy as np
import pandas as pd

import forksafe


def predict(model: forksafe.ModelProxy, x: np.ndarray) -> tuple[int, int, float]:
    total = float(model.predict_on_batch(x.astype("float32")).sum())  # this loads, once here
    return os.getpid(), forksafe.info(model).loads, total


if __name__ == "__main__":
    from pyspark.sql import SparkSession
    from pyspark.sql.functions import pandas_udf

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers: this interpreter
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # nothing bound beyond loopback
    model = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        rng = np.random.default_rng(0)
        frame = spark.createDataFrame(
            pd.DataFrame(rng.standard_normal((64, 4)), columns=list("abcd"))
        )
        frame = frame.repartition(4)

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            for batch in batches:  # the proxy travels in this closure, with every task
                pid, loads, total = predict(model, batch.to_numpy())
                yield pd.DataFrame({"pid": [pid], "loads": [loads], "total": [total]})

        for row in frame.mapInPandas(score, "pid long, loads long, total double").collect():
            print(f"mapInPandas: worker {row.pid}: loads={row.loads}")

        @pandas_udf("long")
        def loads_seen(a: pd.Series) -> pd.Series:
            _, loads, _ = predict(model, np.zeros((1, 4)))
            return pd.Series([loads] * len(a))

        counts = frame.select(loads_seen("a").alias("loads")).distinct().collect()
        print(f"pandas_udf: loads={sorted(row.loads for row in counts)}")
    finally:
        spark.stop()
    print(f"driver loaded: {forksafe.info(model).loaded}")
