"""Tiny, real, deterministic models written in every format the tests load.

Weights come from a seeded generator and the reference output is computed
with numpy from those weights, so no expected number is written by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from forksafe._tiny import numpy_forward as tiny_forward
from forksafe._tiny import tiny_weights

SEED = 20261122
# The Keras backend this run of the suite uses (``nox -s "tests(backend='jax')"`` sets it).
KERAS_BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")


@dataclass(frozen=True)
class Models:
    """Paths of the saved models and the reference input/output."""

    directory: str

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @property
    def keras(self) -> str:
        return self.path("tiny.keras")

    @property
    def h5(self) -> str:
        return self.path("tiny.h5")

    @property
    def savedmodel(self) -> str:
        return self.path("tiny_savedmodel")

    @property
    def tf_keras_h5(self) -> str:
        return self.path("tiny_tf_keras.h5")

    @property
    def lambda_keras(self) -> str:
        return self.path("lambda.keras")

    @property
    def lambda_h5(self) -> str:
        return self.path("lambda.h5")

    @property
    def lambda_tf_keras_h5(self) -> str:
        return self.path("lambda_tf_keras.h5")

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        data = np.load(self.path("reference.npz"))
        return data["x"], data["y"]


def weights() -> list[np.ndarray]:
    """The seeded weights of the tiny model: W1, b1, W2, b2."""
    return tiny_weights(4, 3, (8,), SEED)


def numpy_forward(x: np.ndarray) -> np.ndarray:
    """The tiny model computed with numpy alone: the reference output."""
    return tiny_forward(x, weights())


def build_keras(name: str = "tiny") -> Any:
    """Build the tiny Keras 3 model with the seeded weights."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ],
        name=name,
    )
    model.set_weights(weights())
    return model


def build_torch() -> Any:
    """The tiny model as a plain torch ``nn.Module`` (no Keras), with the seeded weights."""
    import torch

    w1, b1, w2, b2 = weights()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for layer, (w, b) in zip((model[0], model[2]), ((w1, b1), (w2, b2)), strict=True):
            layer.weight.copy_(torch.from_numpy(w.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    return model.eval()


def jax_apply(params: list[Any], x: Any) -> Any:
    """The tiny model as a pure JAX function of its parameters (Flax-style ``apply``)."""
    import jax.numpy as jnp

    w1, b1, w2, b2 = params
    return jnp.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def build_jax() -> Any:
    """A jitted ``jax_apply`` with the seeded parameters bound: ``model(x)`` predicts."""
    import functools

    import jax
    import jax.numpy as jnp

    return functools.partial(jax.jit(jax_apply), [jnp.asarray(w) for w in weights()])


def build_all(directory: str) -> Models:
    """Write every model file into ``directory`` (run in a fresh interpreter).

    Always with Keras on TensorFlow, whatever backend the suite runs under:
    ``.keras`` and ``.h5`` files load under every backend, and the
    SavedModel export and tf_keras need TensorFlow.
    """
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import tf_keras

    models = Models(directory)
    model = build_keras()
    model.save(models.keras)
    model.save(models.h5)
    model.export(models.savedmodel, verbose=False)

    legacy = tf_keras.Sequential(
        [tf_keras.layers.Dense(8, activation="relu", input_shape=(4,)), tf_keras.layers.Dense(3)]
    )
    legacy.set_weights(weights())
    legacy.save(models.tf_keras_h5)

    unsafe = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2.0, name="double")]
    )
    unsafe.save(models.lambda_keras)
    unsafe.save(models.lambda_h5)
    legacy_unsafe = tf_keras.Sequential(
        [tf_keras.layers.Lambda(lambda t: t * 2.0, input_shape=(4,), name="double")]
    )
    legacy_unsafe.save(models.lambda_tf_keras_h5)

    x = np.random.default_rng(SEED + 1).standard_normal((8, 4)).astype("float32")
    np.savez(models.path("reference.npz"), x=x, y=numpy_forward(x))
    return models
