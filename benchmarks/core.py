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
from benchmarks._common import build_cnn, build_model, compare, summary
from benchmarks._render import OVERHEAD_HEADER, emit, mmm, overhead_rows, target


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
    # Call by call (alternate_calls): the proxy's microseconds are spent with
    # the caches as a prediction leaves them, as in a worker.
    return {
        # A/A: the bare model against itself shows this run's noise floor.
        "predict_on_batch (bare vs bare)": compare(
            lambda: bare.predict_on_batch(x),
            lambda: bare.predict_on_batch(x),
            rounds,
            calls,
            alternate_calls=True,
        ),
        "predict_on_batch": compare(
            lambda: bare.predict_on_batch(x),
            lambda: proxy.predict_on_batch(x),
            rounds,
            calls,
            alternate_calls=True,
        ),
        "__call__": compare(lambda: bare(x), lambda: proxy(x), rounds, calls, alternate_calls=True),
        "predict": compare(
            lambda: bare.predict(x, verbose=0),
            lambda: proxy.predict(x, verbose=0),
            max(rounds // 4, 3),
            3,
            alternate_calls=True,
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
            lambda: bare.predict_on_batch(x),
            lambda: bare.predict_on_batch(x),
            rounds,
            2,
            alternate_calls=True,
        ),
        "predict_on_batch": compare(
            lambda: bare.predict_on_batch(x),
            lambda: proxy.predict_on_batch(x),
            rounds,
            2,
            alternate_calls=True,
        ),
        # Eager op by op: a fifth of a second a call here.
        "__call__": compare(
            lambda: bare(x), lambda: proxy(x), max(rounds // 2, 3), 1, alternate_calls=True
        ),
    }


def render(data: dict[str, Any]) -> list[str]:
    """The proxy's cost per call and a child's cold start, for RESULTS.md."""
    cold = data["cold_start"]
    return [
        "## Proxy overhead per call (`benchmarks/core.py`)",
        "",
        "Dense 4→8→3 and MobileNetV2 (96x96x3, `weights=None`), batch 8.",
        "The ratio is the median of per-round proxy/bare ratios, with a bootstrap 95 %",
        "interval. Within a round the proxy and the bare model alternate call by call (the",
        "attribute row: 2000 accesses at a time), each call timed on its own, so both meet",
        "the caches a prediction leaves; the *bare vs bare* rows time the bare model",
        "against itself: how far they land from 1 is this run's noise.",
        "",
        *OVERHEAD_HEADER,
        *overhead_rows(data["overhead_dense"], "Dense"),
        *overhead_rows(data["overhead_cnn"], "MobileNetV2"),
        "",
        "## Child cold start (`benchmarks/core.py`)",
        "",
        "Fork → first prediction in the child; the parent imported Keras but never ran it. "
        f"{cold.get('forks', '?')} forks of each, in adjacent pairs; the ratio is the "
        "median of the per-pair ratios.",
        "",
        "| proxy ms | hand-written post-fork `load_model` ms | ratio |",
        "| --- | --- | --- |",
        f"| {mmm(cold['seconds']['proxy'], 1e3)} | "
        f"{mmm(cold['seconds']['hand_written'], 1e3)} | {cold['ratio']:.3f} |",
    ]


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The proxy costs nothing measurable per call; a child starts as fast as by hand."""
    rows = []
    for model in ("dense", "cnn"):
        for call in ("predict_on_batch", "__call__"):
            row = data.get(f"overhead_{model}", {}).get(call)
            rows.append(
                target(
                    f"{model} {call} proxy/bare",
                    row and row["ratio"],
                    1.02,
                    "",
                    most=True,
                    interval=row and row["ratio_ci95"],
                )
            )
    cold = data.get("cold_start")
    rows.append(
        target("child cold start proxy/hand-written", cold and cold["ratio"], 1.05, "", most=True)
    )
    return rows


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
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
