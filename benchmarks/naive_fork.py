"""Without forksafe: a parent predicts with Keras, then a forked child predicts. Does it hang?

    KERAS_BACKEND=jax python -m benchmarks.naive_fork

Prints one line per case for the current Keras backend: the child's
outcome within 20 s ("ok" or "hang"). The first row of the backend table in
docs/guides/jax-torch.md. Not part of ``python -m benchmarks``.
"""

from __future__ import annotations

import numpy as np

from forksafe.testing import ForkTimeoutError, run_in_fork


def build() -> object:
    """A small dense model (untrained)."""
    import keras

    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(10)])


def main() -> None:
    """Run each case in a fork of a fresh parent (itself a fork of this untouched process)."""
    import keras

    small = np.ones((8, 64), "float32")
    large = np.ones((4096, 64), "float32")
    cases = {
        "parent predicts 8 rows, child predicts 8 rows": (small, small),
        "parent predicts 4096 rows, child predicts 4096 rows": (large, large),
    }
    for name, (first, second) in cases.items():

        def parent(first: np.ndarray = first, second: np.ndarray = second) -> str:
            model = build()
            model.predict(first, verbose=0)
            try:
                run_in_fork(lambda: model.predict(second, verbose=0), timeout=20)
            except ForkTimeoutError:
                return "hang"
            return "ok"

        print(f"{keras.config.backend()}: {name}: {run_in_fork(parent, timeout=120)}")


if __name__ == "__main__":
    main()
