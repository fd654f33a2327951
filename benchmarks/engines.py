"""Dask, Ray and Spark: three ways to score one data set with a model, measured.

    python -m benchmarks.engines [--json OUT] [--batches N] [--engines dask ray spark]

- *naive*: the loaded Keras model itself is shipped with every task (a task
  argument; a closure on Spark). Each task unpickles, that is loads, a copy.
- *hand-written*: the model's path is shipped; each task loads the model
  (on Spark, each partition: ``mapPartitions`` with a load at its top).
- *forksafe*: a proxy is shipped with every task.

Each (engine, way) runs in a fresh driver process with a fresh local cluster
of two worker processes on 127.0.0.1 (Dask ``LocalCluster``, ``ray.init``,
Spark ``local[2]``), so every way starts from workers that have not imported
TensorFlow. Figures: loads per worker process (every load appends its pid to
a log), the pickled task payload in bytes (function and arguments, or the
closure: what every task carries), and seconds from the first submission to
the last answer.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from benchmarks._common import build_model
from benchmarks._render import emit

ENGINES = ("dask", "ray", "spark")
WAYS = ("naive", "hand-written", "forksafe")
ROWS, FEATURES = 256, 32
SPARK_PARTITIONS = 8


def counted_load(path: str, *, log: str) -> Any:
    """Load the model at ``path``, first appending this process's pid to ``log``."""
    _note(log)
    import keras

    return keras.models.load_model(path, compile=False)


def _note(log: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")


def _model(way: str, payload: Any, log: str) -> Any:
    if way == "hand-written":
        return counted_load(payload, log=log)
    if way == "naive" and not getattr(payload, "_bench_seen", False):
        _note(log)  # a model object this process has not seen: it was unpickled here
        payload._bench_seen = True
    return payload


def batch(seed: int) -> np.ndarray:
    """One batch of the fixed data set."""
    return np.random.default_rng(seed).standard_normal((ROWS, FEATURES)).astype("float32")


def score(way: str, payload: Any, seeds: list[int], log: str) -> tuple[int, float]:
    """One task: get the model as ``way`` does, score the batches; (pid, sum of outputs)."""
    model = _model(way, payload, log)
    total = sum(float(np.asarray(model.predict_on_batch(batch(s))).sum()) for s in seeds)
    return os.getpid(), total


def _payload(way: str, path: str, log: str) -> Any:
    if way == "hand-written":
        return path
    if way == "forksafe":
        import forksafe

        return forksafe.load_model(path, loader=counted_load, log=log)
    import keras

    return keras.models.load_model(path, compile=False)  # naive: loaded here, shipped


def drive(engine: str, way: str, path: str, log: str, batches: int) -> dict[str, Any]:
    """Score ``batches`` batches on a fresh cluster of ``engine``, the ``way`` way."""
    import cloudpickle

    payload = _payload(way, path, log)
    if engine == "spark":
        chunks = [list(range(i, batches, SPARK_PARTITIONS)) for i in range(SPARK_PARTITIONS)]
        task_bytes = len(cloudpickle.dumps(lambda seeds: score(way, payload, seeds, log)))
    else:
        chunks = [[i] for i in range(batches)]
        task_bytes = len(cloudpickle.dumps((score, (way, payload, chunks[0], log))))
    runner = {"dask": _dask, "ray": _ray, "spark": _spark}[engine]
    seconds, answers = runner(way, payload, chunks, log)
    return {"seconds": seconds, "answers": answers, "task_bytes": task_bytes}


def _dask(way: str, payload: Any, chunks: list[list[int]], log: str) -> tuple[float, list[Any]]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        start = time.perf_counter()
        n = len(chunks)
        answers = client.gather(client.map(score, [way] * n, [payload] * n, chunks, [log] * n))
        return time.perf_counter() - start, answers


def _ray(way: str, payload: Any, chunks: list[list[int]], log: str) -> tuple[float, list[Any]]:
    import ray

    ray.init(
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        remote = ray.remote(score)
        start = time.perf_counter()
        answers = ray.get([remote.remote(way, payload, c, log) for c in chunks])
        return time.perf_counter() - start, answers
    finally:
        ray.shutdown()


def _spark(way: str, payload: Any, chunks: list[list[int]], log: str) -> tuple[float, list[Any]]:
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    try:
        parts = spark.sparkContext.parallelize(chunks, len(chunks))
        start = time.perf_counter()
        answers = parts.map(lambda seeds: score(way, payload, seeds, log)).collect()
        return time.perf_counter() - start, answers
    finally:
        spark.stop()


def _run_driver(engine: str, way: str, path: str, batches: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        log = os.path.join(directory, "loads.log")
        out = os.path.join(directory, "out.json")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": "127.0.0.1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": uuid.uuid4().hex,
        }
        args = ["--driver", engine, way, path, log, str(batches), out]
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.engines", *args],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{engine} {way} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        with open(out, encoding="utf-8") as f:
            result: dict[str, Any] = json.load(f)
        with open(log, encoding="utf-8") as f:
            loads = collections.Counter(int(line) for line in f if line.strip())
    workers = {pid for pid, _ in result["answers"]}
    per_worker = [loads.get(pid, 0) for pid in sorted(workers)]
    return {
        "seconds": result["seconds"],
        "task_bytes": result["task_bytes"],
        "tasks": len(result["answers"]),
        "workers": len(workers),
        "loads": sum(loads.values()),
        "loads_outside_workers": sum(n for pid, n in loads.items() if pid not in workers),
        "loads_per_worker": {"min": min(per_worker), "max": max(per_worker)},
        "total": sum(total for _, total in result["answers"]),
    }


def main(argv: list[str] | None = None) -> int:
    """Run every (engine, way) in its own driver; write the figures."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--driver":
        engine, way, path, log, batches, out = args[1:7]
        # By reference, as from a user's module: workers import it, tasks carry its name.
        from benchmarks import engines

        with open(out, "w", encoding="utf-8") as f:
            json.dump(engines.drive(engine, way, path, log, int(batches)), f)
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    parser.add_argument("--batches", type=int, default=32)
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    options = parser.parse_args(args)
    report: dict[str, Any] = {
        "batches": options.batches,
        "rows": ROWS,
        "model": f"Dense {FEATURES}→256→256→10",
        "engines": {},
    }
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(directory, "engines.keras", FEATURES, (256, 256), 10)
        report["model_bytes"] = os.path.getsize(path)
        for engine in options.engines:
            rows = report["engines"][engine] = {}
            for way in WAYS:
                rows[way] = _run_driver(engine, way, path, options.batches)
                print(engine, way, json.dumps(rows[way]), flush=True)
            totals = {round(row["total"], 2) for row in rows.values()}
            if len(totals) != 1:  # the three ways must compute the same answers
                raise SystemExit(f"{engine}: the ways disagree: {totals}")
    emit(options.json, report, render)
    return 0


def render(section: dict[str, Any]) -> list[str]:
    """Loads, bytes per task and time of each way on each engine, for RESULTS.md."""
    out = [
        "## Dask, Ray and Spark (`benchmarks/engines.py`)",
        "",
        f"{section['batches']} batches of {section['rows']} rows scored by a "
        f"{section['model']} model ({section['model_bytes'] / 1000:.0f} kB `.keras` file)",
        "on a fresh local cluster of two worker processes per row (Dask `LocalCluster`,",
        "`ray.init`, Spark `local[2]`): one task per batch (Spark: one per partition, "
        f"{SPARK_PARTITIONS}).",
        "*naive* ships the loaded model with every task, *hand-written* ships its path and",
        "loads it in every task (Spark: every partition), *forksafe* ships a proxy. Loads are",
        "counted in every process (*elsewhere*: outside the workers; *naive* also loads the",
        "model in the driver, to ship it, which is not counted); bytes are the pickled",
        "task (function and arguments, or the closure). Seconds run from the first submission",
        "to the last answer, workers already started; one run each on a shared machine, so",
        "they are noisy: the loads and bytes are the figures to read.",
        "",
        "| engine | way | loads per worker | loads elsewhere | bytes per task | seconds "
        "| seconds / forksafe |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for engine, rows in section["engines"].items():
        base = rows["forksafe"]["seconds"]
        for way, row in rows.items():
            spread = row["loads_per_worker"]
            loads = (
                f"{spread['min']}"
                if spread["min"] == spread["max"]
                else (f"{spread['min']}-{spread['max']}")
            )
            out.append(
                f"| {engine} | {way} | {loads} ({row['loads']} in {row['workers']} workers) | "
                f"{row['loads_outside_workers']} | {row['task_bytes']:,} | "
                f"{row['seconds']:.1f} | {row['seconds'] / base:.2f} |"
            )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
