"""A module-level model used by a multiprocessing pool (fork): each worker loads once.

python examples/make_model.py /tmp/model.keras
MODEL_PATH=/tmp/model.keras python examples/multiprocessing_pool.py
"""

import os

import numpy as np

import forksafe

MODEL = forksafe.load_model(os.environ.get("MODEL_PATH", "model.keras"))


def predict(seed: int) -> tuple[int, int, float]:
    x = np.random.default_rng(seed).standard_normal((8, 4)).astype("float32")
    total = float(MODEL.predict_on_batch(x).sum())  # first: this loads, in this worker
    return os.getpid(), forksafe.info(MODEL).loads, total


if __name__ == "__main__":
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        for pid, loads, total in pool.map(predict, range(6)):
            print(f"worker {pid}: loads={loads} sum={total:.4f}")
