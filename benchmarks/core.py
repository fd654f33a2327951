"""Core costs: proxy overhead per call, and a fork child's time to its first prediction.

Every figure is measured against its baseline in the same run, interleaved
in rounds so that machine noise hits both alike; ratios are what to read.

    python -m benchmarks.core [--rounds 15] [--calls 200] [--forks 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import forksafe


class Echo:
    """A framework-free model: its methods measure the transport alone."""

    def echo(self, x: Any) -> Any:
        """Return ``x``: a round trip of its bytes."""
        return x

    def noop(self) -> None:
        """Do nothing: a round trip of an empty message."""
        return None


def _build(path: str) -> None:
    import keras

    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    model.save(path)


def build_model(directory: str) -> str:
    """Save a small Dense model from a spawned process, keeping this one untouched."""
    path = os.path.join(directory, "bench.keras")
    process = multiprocessing.get_context("spawn").Process(target=_build, args=(path,))
    process.start()
    process.join(120)
    if process.exitcode != 0:
        process.kill()
        raise SystemExit("building the benchmark model failed")
    return path


def write_json(path: str | None, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` when one was given."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


def summary(values: list[float]) -> dict[str, float]:
    """Min, median and max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


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
    for _ in range(forks):
        times["proxy"].append(child_seconds(with_proxy))
        times["hand_written"].append(child_seconds(hand_written))
    ratio = statistics.median(times["proxy"]) / statistics.median(times["hand_written"])
    return {"seconds": {k: summary(v) for k, v in times.items()}, "ratio": ratio}


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def overhead(path: str, x: np.ndarray, rounds: int, calls: int) -> dict[str, Any]:
    """Proxy vs bare model, interleaved per round."""
    proxy = forksafe.load_model(path)
    proxy.predict_on_batch(x)
    bare = proxy.__wrapped__
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any], int]] = {
        "predict_on_batch": (
            lambda: bare.predict_on_batch(x),
            lambda: proxy.predict_on_batch(x),
            calls,
        ),
        "__call__": (lambda: bare(x), lambda: proxy(x), calls),
        "predict": (
            lambda: bare.predict(x, verbose=0),
            lambda: proxy.predict(x, verbose=0),
            max(calls // 10, 5),
        ),
        "attribute": (lambda: bare.name, lambda: proxy.name, calls * 100),
    }
    results: dict[str, Any] = {}
    for name, (base, proxied, n) in cases.items():
        base(), proxied()  # warm up (tf.function tracing)
        b, p = [], []
        for _ in range(rounds):
            b.append(per_call(base, n))
            p.append(per_call(proxied, n))
        results[name] = {
            "bare_us": summary([v * 1e6 for v in b]),
            "proxy_us": summary([v * 1e6 for v in p]),
            "ratio": statistics.median(p) / statistics.median(b),
            "added_ns": (statistics.median(p) - statistics.median(b)) * 1e9,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import keras
    import tensorflow as tf

    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(directory)
        # Cold start first: it needs this process to have never run TensorFlow.
        cold = cold_start(path, x, args.forks)
        hot = overhead(path, x, args.rounds, args.calls)
    report = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "versions": {
            "forksafe": forksafe.__version__,
            "keras": keras.__version__,
            "tensorflow": tf.__version__,
            "numpy": np.__version__,
        },
        "cold_start": cold,
        "overhead": hot,
    }
    print(f"{'call':<18}{'bare µs':>12}{'proxy µs':>12}{'ratio':>9}{'added ns':>11}")
    for name, row in hot.items():
        print(
            f"{name:<18}{row['bare_us']['median']:>12.3f}{row['proxy_us']['median']:>12.3f}"
            f"{row['ratio']:>9.3f}{row['added_ns']:>11.0f}"
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
