"""Keras on JAX from threads: one model called by N threads at once, bare vs proxy.

A Keras-JAX model fails when threads call it at once (``Array has been
deleted``: each call donates the variables' buffers); the proxy serializes
calls for this backend. For 1, 2, 4 and 8 threads, each making ``calls``
``predict_on_batch`` calls released together by a barrier: how many calls
answered correctly, and calls per second, bare and through a proxy.

    python -m benchmarks.jax_threads [--rounds 5] [--calls 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from typing import Any

import numpy as np

import forksafe
from benchmarks._common import build_model, summary
from benchmarks._render import emit, mmm, target

THREADS = (1, 2, 4, 8)


def _hammer(fn: Any, expected: np.ndarray, threads: int, calls: int) -> tuple[int, float]:
    """(calls answered correctly, answered calls per second) with ``threads`` threads at once."""
    barrier = threading.Barrier(threads + 1)
    answered = [0] * threads

    def work(index: int) -> None:
        barrier.wait()
        for _ in range(calls):
            try:
                if np.allclose(np.asarray(fn()), expected, atol=1e-5):
                    answered[index] += 1
            except Exception:  # the bare model's failures are what this counts
                pass

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    return sum(answered), sum(answered) / elapsed


def threads_on_one_model(path: str, rounds: int, calls: int) -> dict[str, Any]:
    """Answered share and answered calls/s from N threads: bare Keras-JAX model vs proxy."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    proxy = forksafe.load_model(path)
    expected = np.asarray(proxy.predict_on_batch(x))
    assert forksafe.info(proxy).backend == "jax"
    bare = proxy.__wrapped__
    results = {}
    for threads in THREADS:
        b_share, p_share, b_rate, p_rate = [], [], [], []
        for index in range(rounds):
            order = [("bare", bare), ("proxy", proxy)]
            for name, model in order if index % 2 == 0 else order[::-1]:
                done, rate = _hammer(
                    lambda m=model: m.predict_on_batch(x), expected, threads, calls
                )
                share = done / (threads * calls)
                (b_share if name == "bare" else p_share).append(share)
                (b_rate if name == "bare" else p_rate).append(rate)
        results[str(threads)] = {
            "calls": threads * calls,
            "bare_answered_share": summary(b_share),
            "proxy_answered_share": summary(p_share),
            "bare_answered_per_s": summary(b_rate),
            "proxy_answered_per_s": summary(p_rate),
            "ratio": statistics.median(p_rate) / max(statistics.median(b_rate), 1e-9),
        }
    return results


def render(data: dict[str, Any]) -> list[str]:
    """Answered calls from N threads, bare and through a proxy, for RESULTS.md."""
    out = [
        "## Keras on JAX from threads (`benchmarks/jax_threads.py`)",
        "",
        "One Keras-JAX Dense 4→8→3 model, `predict_on_batch` on batch 8, N threads released",
        "together, each making the same number of calls. The bare model fails most calls",
        "once threads overlap (`Array has been deleted`: each call donates the variables'",
        "buffers); the proxy serializes calls for this backend. *Answered* counts correct",
        "answers; calls/s counts answered calls only.",
        "",
        "| threads | calls | bare answered | proxy answered | bare answered/s "
        "| proxy answered/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for threads, row in data["threads"].items():
        out.append(
            f"| {threads} | {row['calls']} | "
            f"{mmm(row['bare_answered_share'], 100, '.0f')} % | "
            f"{mmm(row['proxy_answered_share'], 100, '.0f')} % | "
            f"{mmm(row['bare_answered_per_s'], fmt='.0f')} | "
            f"{mmm(row['proxy_answered_per_s'], fmt='.0f')} | {row['ratio']:.2f} |"
        )
    return out


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every call from eight threads on one Keras-JAX proxy is answered."""
    row = data.get("threads", {}).get("8")
    return [
        target(
            "Keras on JAX, 8 threads on one proxy: share of calls answered",
            row and row["proxy_answered_share"]["min"],
            1.0,
            "",
            most=False,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    # Here, not at import (the runner imports this module to render it), and before
    # Keras is imported, here and in the spawned builder.
    os.environ["KERAS_BACKEND"] = "jax"
    with tempfile.TemporaryDirectory() as directory:
        report = {"threads": threads_on_one_model(build_model(directory), args.rounds, args.calls)}
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
