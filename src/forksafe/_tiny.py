"""Tiny, real, deterministic Keras models with a reference output computed by numpy."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TinyModel", "build_tiny_model", "save_tiny_model"]

FORMATS = ("keras", "h5", "savedmodel")


@dataclass(frozen=True)
class TinyModel:
    """A saved tiny model and what it must answer; a path (``os.PathLike``) to the model.

    ``forksafe.load_model(tiny)`` and ``open``-style APIs accept it as they
    accept ``tiny.path``.

    Attributes:
        path: the ``.keras`` or ``.h5`` file, or the SavedModel directory.
        format: ``"keras"``, ``"h5"`` or ``"savedmodel"``.
        x: a reference input batch (float32).
        y: the model's output for ``x``, computed with numpy from the
            weights, never by the framework.
    """

    path: str
    format: str
    x: np.ndarray[Any, Any]
    y: np.ndarray[Any, Any]

    def __fspath__(self) -> str:
        """The model's path, so a ``TinyModel`` can be passed where a path is expected."""
        return self.path


def _shapes(inputs: int, outputs: int, hidden: tuple[int, ...]) -> list[tuple[int, ...]]:
    sizes = [inputs, *hidden, outputs]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        shapes += [(fan_in, fan_out), (fan_out,)]
    return shapes


def tiny_weights(inputs: int, outputs: int, hidden: tuple[int, ...], seed: int) -> list[Any]:
    """The seeded weights of the tiny model, kernel then bias per layer."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype("float32") for s in _shapes(inputs, outputs, hidden)]


def numpy_forward(x: np.ndarray[Any, Any], weights: list[Any]) -> np.ndarray[Any, Any]:
    """The tiny model computed with numpy alone: ReLU hidden layers, linear output."""
    out = x
    for index in range(0, len(weights), 2):
        out = out @ weights[index] + weights[index + 1]
        if index + 2 < len(weights):
            out = np.maximum(out, 0.0)
    return out.astype("float32")


def build_tiny_model(
    inputs: int = 4,
    outputs: int = 3,
    hidden: tuple[int, ...] = (8,),
    seed: int = 0,
    name: str = "tiny",
) -> Any:
    """Build the tiny Keras model in this process (this starts the framework runtime here)."""
    import keras

    layers: list[Any] = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(size, activation="relu") for size in hidden]
    layers.append(keras.layers.Dense(outputs))
    model = keras.Sequential(layers, name=name)
    model.set_weights(tiny_weights(inputs, outputs, hidden, seed))
    return model


def save_tiny_model(
    directory: str,
    format: str = "keras",
    inputs: int = 4,
    outputs: int = 3,
    hidden: tuple[int, ...] = (8,),
    seed: int = 0,
    batch: int = 8,
) -> TinyModel:
    """Build and save the tiny model in ``format``; return where, with reference data."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    model = build_tiny_model(inputs, outputs, hidden, seed)
    name = f"tiny-{inputs}-{'-'.join(map(str, hidden))}-{outputs}-s{seed}"
    if format == "savedmodel":
        path = os.path.join(directory, name)
        model.export(path, verbose=False)
    else:
        path = os.path.join(directory, f"{name}.{format}")
        model.save(path)
    x = np.random.default_rng(seed + 1).standard_normal((batch, inputs)).astype("float32")
    y = numpy_forward(x, tiny_weights(inputs, outputs, hidden, seed))
    return TinyModel(path=path, format=format, x=x, y=y)
