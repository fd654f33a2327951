"""Quickstart: one module-level model, used by forked workers, never hanging.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

import forksafe

MODEL: forksafe.ModelProxy | None = None
X = np.linspace(-1.0, 1.0, 32, dtype="float32").reshape(8, 4)


def build(path: str) -> None:
    """Save a tiny model (in a spawned process, so this one never starts TensorFlow)."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="out")])
    model.save(path)


def work(batch: np.ndarray) -> tuple[int, int, float]:
    """A worker task: the proxy loads the model in this worker on first use."""
    assert MODEL is not None
    y = MODEL.predict_on_batch(batch)
    return os.getpid(), forksafe.info(MODEL).loads, float(np.sum(y))


def main() -> None:
    global MODEL
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
            try:
                pool.apply_async(work, (X,)).get(timeout=60)
            except forksafe.InheritedRuntimeError as exc:
                print(f"a worker forked now refuses at once instead of hanging:\n  {exc}")


if __name__ == "__main__":
    main()
