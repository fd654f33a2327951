"""TF1 graph mode: the proxy re-entering the model's graph and session on every call.

Baseline: the same ``tf_keras`` model loaded in this thread's default graph
and called from that thread, which needs no re-entry (and fails from any
other thread). Runs in its own process: graph mode is process-wide.

    python -m benchmarks.graph [--rounds 15] [--calls 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before anything imports TensorFlow

import numpy as np

import forksafe
from benchmarks._common import build_legacy_model, compare, write_json


def graph_overhead(path: str, rounds: int, calls: int) -> dict[str, Any]:
    """Proxy (graph + session re-entered per call) vs the bare model in its own thread."""
    import tensorflow as tf
    import tf_keras

    tf.compat.v1.disable_eager_execution()
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    bare = tf_keras.models.load_model(path)
    proxy = forksafe.load_model(path)
    proxy.predict_on_batch(x)
    assert forksafe.info(proxy).graph_mode
    # What a thread-pool user writes by hand: the report's fix.
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default(), session.as_default():
        own = tf_keras.models.load_model(path)

    def hand_written() -> Any:
        with graph.as_default(), session.as_default():
            return own.predict_on_batch(x)

    return {
        "predict_on_batch": compare(
            lambda: bare.predict_on_batch(x), lambda: proxy.predict_on_batch(x), rounds, calls
        ),
        "predict_on_batch_vs_hand_written_reentry": compare(
            hand_written, lambda: proxy.predict_on_batch(x), rounds, calls
        ),
        "predict": compare(
            lambda: bare.predict(x, verbose=0),
            lambda: proxy.predict(x, verbose=0),
            rounds,
            max(calls // 10, 5),
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the graph-mode benchmark and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        report = {
            "graph_mode": graph_overhead(build_legacy_model(directory), args.rounds, args.calls)
        }
    for name, row in report["graph_mode"].items():
        print(
            f"TF1 graph {name}: bare {row['bare_us']['median']:.1f} µs, proxy "
            f"{row['proxy_us']['median']:.1f} µs, ratio {row['ratio']:.3f}"
        )
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
