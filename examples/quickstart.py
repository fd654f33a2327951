"""Quickstart: one module-level model, used by forked workers, never hanging.

Workers load the model themselves; after the parent has run TensorFlow (which
used to hang every forked worker), the worker's model runs in a clean host
process instead, or, with isolation="inprocess", fails at once with the reason.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import forksafe

MODEL: forksafe.ModelProxy | None = None
X = np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(8, 4)


def build(path: str) -> None:
    """Save a tiny model with fixed weights (in a spawned process: this one never starts TF)."""
    from forksafe.testing import build_tiny_model

    build_tiny_model().save(path)


def work(batch: np.ndarray) -> tuple[int, int, float]:
    """A worker task: the proxy loads the model in this worker on first use."""
    assert MODEL is not None
    y = MODEL.predict_on_batch(batch)
    return os.getpid(), forksafe.info(MODEL).loads, float(np.sum(y))


def main() -> None:
    global MODEL
    warnings.simplefilter("always", forksafe.ForkSafeWarning)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        builder = multiprocessing.get_context("spawn").Process(target=build, args=(path,))
        builder.start()
        builder.join(120)

        # The one-line change: this loads nothing and starts no runtime.
        MODEL = forksafe.load_model(path)

        fork = multiprocessing.get_context("fork")
        with fork.Pool(2) as pool:
            for pid, loads, total in pool.map(work, [X] * 4):
                print(f"worker {pid}: model loads in this worker = {loads}, sum(y) = {total:.4f}")

        # What used to hang every worker: the parent itself runs the model.
        print(f"parent predicts too: sum(y) = {float(np.sum(MODEL.predict_on_batch(X))):.4f}")
        with fork.Pool(1) as pool:
            # The default isolation="auto" now runs the worker's model in a clean host process
            # (with a ForkSafeWarning saying so) ...
            pid, _, total = pool.apply_async(work, (X,)).get(timeout=120)
            print(f"worker {pid} after that: answered through a model host, sum(y) = {total:.4f}")
            # ... and isolation="inprocess" refuses at once instead of hanging.
            pool.apply_async(use_inprocess, (path,)).get(timeout=60)


def use_inprocess(path: str) -> None:
    """A worker asking for the model in its own process, which cannot work any more."""
    try:
        forksafe.load_model(path, isolation="inprocess").predict_on_batch(X)
    except forksafe.InheritedRuntimeError as exc:
        print(f"with isolation='inprocess' the worker refuses at once:\n  {exc}")


if __name__ == "__main__":
    main()
