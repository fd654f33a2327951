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

import numpy as np

import forksafe
from benchmarks._common import build_legacy_model, compare
from benchmarks._render import OVERHEAD_HEADER, emit, overhead_rows


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


def render(data: dict[str, Any]) -> list[str]:
    """TF1 graph mode's cost per call, for RESULTS.md."""
    return [
        "## TF1 graph mode per call (`benchmarks/graph.py`)",
        "",
        "A `tf_keras` Dense 4→8→3 with eager execution disabled, batch 8: its bare baseline",
        "called from the thread whose default graph holds it (no re-entry), and a hand-written",
        "`with graph.as_default(), session.as_default():` as the threads workaround does.",
        "Ratios as in the proxy overhead table.",
        "",
        *OVERHEAD_HEADER,
        *overhead_rows(data["graph_mode"], "TF1 graph"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the graph-mode benchmark and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    # Here, not at import (the runner imports this module to render it), and before
    # anything imports TensorFlow.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    with tempfile.TemporaryDirectory() as directory:
        report = {
            "graph_mode": graph_overhead(build_legacy_model(directory), args.rounds, args.calls)
        }
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
