"""Run every usage of a flavor on a bare model and on proxies of the same file, in one process.

    python -m tests.transparency.runner FLAVOR MODELS_DIR OUT

Flavors: ``keras3`` (Keras 3 on TensorFlow), ``tf_keras`` (eager) and ``tf1``
(tf_keras in TF1 graph mode: ``disable_eager_execution`` is process-wide, so
each flavor has its interpreter; ``TF_USE_LEGACY_KERAS=1`` is set by the
caller for the tf_keras flavors). Each usage gets a freshly loaded bare model
and a fresh proxy; usages marked ``host`` also run on a proxy with
``isolation="process"``. Outcomes are written to OUT as plain data (pickle).
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from forksafe._frameworks import framework_of_value, to_numpy

FLAVORS = ("keras3", "tf_keras", "tf1")


@dataclass
class Context:
    """What a usage gets besides the model."""

    flavor: str
    keras: Any
    tf: Any
    path: str
    x: np.ndarray
    y: np.ndarray
    tmp: str
    kind: str  # "bare", "proxy" or "host"

    def file(self, name: str) -> str:
        """A fresh path in this usage's own temporary directory."""
        return os.path.join(self.tmp, f"{self.kind}-{name}")


def normalize(value: Any, depth: int = 0) -> Any:
    """Plain, comparable data for a usage's result (tensors as arrays, objects as type names)."""
    tf = sys.modules.get("tensorflow")
    if isinstance(value, np.ndarray | np.generic):
        return ("array", np.asarray(value, dtype=float) if value.dtype.kind in "fiub" else value)
    if tf is not None and isinstance(value, tf.Tensor):
        if hasattr(value, "numpy"):
            return ("tensor", np.asarray(value.numpy(), dtype=float))
        return ("symbolic", str(value.shape))
    if framework_of_value(value) in ("jax", "torch") and hasattr(value, "__array__"):
        return ("tensor", np.asarray(to_numpy(value), dtype=float))  # Keras on JAX or torch
    if depth < 4 and isinstance(value, list | tuple):
        return (type(value).__name__, [normalize(v, depth + 1) for v in value])
    if depth < 4 and isinstance(value, dict):
        return ("dict", {str(k): normalize(v, depth + 1) for k, v in sorted(value.items())})
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    return ("object", type(value).__name__)


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """("ok", normalized result) or ("raised", exception type name, message)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ("ok", normalize(fn(*args)))
    except BaseException as exc:  # a usage's failure is its outcome
        if isinstance(exc, KeyboardInterrupt):
            raise
        return ("raised", type(exc).__name__, f"{exc}"[:300], traceback.format_exc()[-1500:])


def setup(flavor: str) -> tuple[Any, Any, str]:
    """Import the flavor's Keras (and switch TF1 graph mode on); return (keras, tf, file name)."""
    import tensorflow as tf

    if flavor == "keras3":
        import keras

        return keras, tf, "tiny.keras"
    import tf_keras

    if flavor == "tf1":
        tf.compat.v1.disable_eager_execution()
    return tf_keras, tf, "tiny_tf_keras.h5"


def run(flavor: str, models_dir: str) -> dict[str, dict[str, Any]]:
    """Every usage of ``flavor``: {name: {"bare": outcome, "proxy": ..., "host": ...}}."""
    import forksafe
    from tests.transparency.usages import USAGES

    keras, tf, name = setup(flavor)
    path = os.path.join(models_dir, name)
    data = np.load(os.path.join(models_dir, "reference.npz"))
    results: dict[str, dict[str, Any]] = {}
    for usage in USAGES:
        if flavor not in usage.flavors:
            continue
        row = {}
        kinds = ["bare", "proxy"] + (["host"] if usage.host and flavor != "tf1" else [])
        for kind in kinds:
            with tempfile.TemporaryDirectory() as tmp:
                ctx = Context(flavor, keras, tf, path, data["x"], data["y"], tmp, kind)
                if kind == "bare":
                    make = lambda: keras.models.load_model(path, compile=False)  # noqa: E731
                elif kind == "proxy":
                    make = lambda: forksafe.load_model(path, compile=False)  # noqa: E731
                else:
                    make = lambda: forksafe.load_model(  # noqa: E731
                        path, compile=False, isolation="process", timeout=120
                    )
                model = make()
                row[kind] = outcome(usage.fn, model, ctx)
                del model
        results[usage.name] = row
    return results


def main() -> int:
    """Entry point: run a flavor, write its outcomes."""
    flavor, models_dir, out = sys.argv[1:4]
    results = run(flavor, models_dir)
    with open(out, "wb") as f:
        pickle.dump(results, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
