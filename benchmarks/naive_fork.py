"""Without forksafe: a parent predicts with Keras, then a forked child predicts; does it hang.

    KERAS_BACKEND=jax python -m benchmarks.naive_fork

Prints one line per case for the current Keras backend: the child's
outcome within 20 s ("ok" or "hang"), and whether forksafe (imported, but
not used) saw the parent's runtime as started. The first row of the backend
table in docs/guides/jax-torch.md. Not part of ``python -m benchmarks``.
"""

from __future__ import annotations

import numpy as np

import forksafe
from forksafe.testing import ForkTimeoutError, run_in_fork


def build(inputs: int, width: int) -> object:
    """A dense model (untrained)."""
    import keras

    return keras.Sequential(
        [keras.Input((inputs,)), keras.layers.Dense(width), keras.layers.Dense(10)]
    )


def main() -> None:
    """Run each case in a fork of a fresh parent (itself a fork of this untouched process)."""
    import keras

    cases = {  # name: (inputs, width, rows)
        "4->8->10 model, 8 rows": (4, 8, 8),
        "64->512->10 model, 4096 rows": (64, 512, 4096),
    }
    for name, (inputs, width, rows) in cases.items():

        def parent(inputs: int = inputs, width: int = width, rows: int = rows) -> str:
            model = build(inputs, width)
            x = np.ones((rows, inputs), "float32")
            model.predict(x, verbose=0)
            started = getattr(forksafe.runtime_state(), keras.config.backend()).started
            try:
                run_in_fork(lambda: model.predict(x, verbose=0), timeout=20)
            except ForkTimeoutError:
                return f"child hangs; forksafe sees the runtime started: {started}"
            return f"child ok; forksafe sees the runtime started: {started}"

        print(f"{keras.config.backend()}: {name}: {run_in_fork(parent, timeout=120)}")


if __name__ == "__main__":
    main()
