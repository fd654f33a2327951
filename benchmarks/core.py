"""Core costs: proxy overhead per call, and a fork child's time to its first prediction.

Every figure is measured against its baseline in the same run, interleaved
in rounds so that machine noise hits both alike; ratios are what to read.

    python -m benchmarks.core [--rounds 101] [--calls 20] [--forks 100] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import forksafe
from benchmarks._common import build_cnn, build_model, compare, summary, write_json


def child_seconds(first_prediction: Callable[[], Any], timeout: float = 60.0) -> float:
    """Fork; the child runs ``first_prediction``; return fork-to-answer seconds."""
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across fork
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(int(timeout))
            first_prediction()
            os.write(write_fd, pickle.dumps(time.perf_counter() - start))
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    if not data:
        raise RuntimeError("benchmark child gave no answer")
    return float(pickle.loads(data))


def cold_start(path: str, x: np.ndarray, forks: int) -> dict[str, Any]:
    """Fork to first prediction: proxy vs a hand-written post-fork loader."""
    proxy = forksafe.load_model(path)

    def with_proxy() -> None:
        proxy.predict_on_batch(x)

    def hand_written() -> None:  # what a worker_process_init hook would do
        import keras

        keras.models.load_model(path).predict_on_batch(x)

    times: dict[str, list[float]] = {"proxy": [], "hand_written": []}
    for index in range(forks):  # adjacent pairs, alternating which goes first
        order = ("proxy", "hand_written") if index % 2 == 0 else ("hand_written", "proxy")
        for name in order:
            times[name].append(child_seconds(with_proxy if name == "proxy" else hand_written))
    ratio = statistics.median(
        p / h for p, h in zip(times["proxy"], times["hand_written"], strict=True)
    )
    return {"seconds": {k: summary(v) for k, v in times.items()}, "ratio": ratio, "forks": forks}


def overhead(path: str, x: np.ndarray, rounds: int, calls: int) -> dict[str, Any]:
    """Proxy vs bare model, interleaved per round."""
    proxy = forksafe.load_model(path)
    proxy.predict_on_batch(x)
    bare = proxy.__wrapped__
    return {
        # A/A: the bare model against itself shows this run's noise floor.
        "predict_on_batch (bare vs bare)": compare(
            lambda: bare.predict_on_batch(x), lambda: bare.predict_on_batch(x), rounds, calls
        ),
        "predict_on_batch": compare(
            lambda: bare.predict_on_batch(x), lambda: proxy.predict_on_batch(x), rounds, calls
        ),
        "__call__": compare(lambda: bare(x), lambda: proxy(x), rounds, calls),
        "predict": compare(
            lambda: bare.predict(x, verbose=0),
            lambda: proxy.predict(x, verbose=0),
            max(rounds // 4, 3),
            3,
        ),
        "attribute": compare(lambda: bare.name, lambda: proxy.name, rounds, calls * 100),
    }


def cnn_overhead(path: str, rounds: int) -> dict[str, Any]:
    """Proxy vs bare model for a mid-size CNN (MobileNetV2, 96x96x3, batch 8)."""
    x = np.random.default_rng(1).standard_normal((8, 96, 96, 3)).astype("float32")
    proxy = forksafe.load_model(path)
    proxy.predict_on_batch(x)
    bare = proxy.__wrapped__
    return {
        "predict_on_batch (bare vs bare)": compare(
            lambda: bare.predict_on_batch(x), lambda: bare.predict_on_batch(x), rounds, 2
        ),
        "predict_on_batch": compare(
            lambda: bare.predict_on_batch(x), lambda: proxy.predict_on_batch(x), rounds, 2
        ),
        # Eager op by op: a fifth of a second a call here.
        "__call__": compare(lambda: bare(x), lambda: proxy(x), max(rounds // 2, 3), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the core benchmarks and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    import keras  # noqa: F401  (imported, never run, before the forks: as in a worker)

    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(directory)
        cnn = build_cnn(directory)
        # Cold start first: it needs this process to have never run TensorFlow.
        cold = cold_start(path, x, args.forks)
        report = {
            "cold_start": cold,
            "overhead_dense": overhead(path, x, args.rounds, args.calls),
            "overhead_cnn": cnn_overhead(cnn, args.rounds),
        }
    print(f"{'call':<30}{'bare µs':>12}{'proxy µs':>12}{'ratio':>9}{'added ns':>11}")
    for model in ("dense", "cnn"):
        for name, row in report[f"overhead_{model}"].items():
            print(
                f"{model + ' ' + name:<30}{row['bare_us']['median']:>12.3f}"
                f"{row['proxy_us']['median']:>12.3f}{row['ratio']:>9.3f}{row['added_ns']:>11.0f}"
            )
    s = cold["seconds"]
    print(
        f"\nfork -> first prediction (median of {args.forks}): proxy "
        f"{s['proxy']['median'] * 1e3:.1f} ms, hand-written post-fork load "
        f"{s['hand_written']['median'] * 1e3:.1f} ms, ratio {cold['ratio']:.3f}"
    )
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
