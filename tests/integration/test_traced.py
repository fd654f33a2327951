"""First use of a proxy inside traced code: the model loads as from a plain frame.

A proxy loads where it is first used. Inside a ``tf.function`` trace, a
``tf.data`` map, a custom ``train_step`` or a Keras ``Lambda`` layer that
used to build the model in the caller's function graph (every later call
failed) or run into Keras' stateless scope. Each scenario runs in a clean
process, once with Keras 3 and once with tf_keras.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.models import Models
from tests.support.children import run_clean

pytestmark = pytest.mark.timeout(300)

CONTEXTS = ("tf.function", "dataset.map", "train_step", "lambda")


def _framework(flavor: str) -> tuple[Any, Any, str]:
    """(tensorflow, the Keras module, the model file) for ``flavor``."""
    if flavor == "tf_keras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras_module
    else:
        import keras as keras_module
    import tensorflow as tf

    return tf, keras_module, "tiny_tf_keras.h5" if flavor == "tf_keras" else "tiny.keras"


def _first_use(context: str, model: Any, tf: Any, keras: Any, x: np.ndarray) -> np.ndarray:
    """Use ``model`` (bare or a fresh proxy) for the first time inside ``context``."""
    if context == "tf.function":
        return np.asarray(tf.function(lambda t: model(t))(tf.constant(x)))
    if context == "dataset.map":
        batches = tf.data.Dataset.from_tensor_slices(x).batch(4).map(lambda t: model(t))
        return np.concatenate([np.asarray(b) for b in batches])
    if context == "lambda":
        inputs = keras.Input((4,))
        wrapper = keras.Model(inputs, keras.layers.Lambda(lambda t: model(t))(inputs))
        return np.asarray(wrapper.predict(x, verbose=0))
    teacher = model

    class Student(keras.Model):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, inputs: Any) -> Any:
            return self.dense(inputs)

        def train_step(self, data: Any) -> dict[str, Any]:
            target = teacher(data, training=False)  # the teacher's first use: in the trace
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(data, training=True) - target))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
            return {"loss": loss}

    student = Student()
    student.compile(optimizer="sgd")
    student.fit(x, epochs=1, batch_size=4, verbose=0)
    return np.asarray(teacher(x))


def first_use_in_traced_code(models: Models, flavor: str) -> dict[str, Any]:
    """Each context on the bare model, then on a fresh proxy; then plain calls on the proxy."""
    tf, keras, name = _framework(flavor)
    x, _ = models.reference()
    path = models.path(name)
    out: dict[str, Any] = {}
    for context in CONTEXTS:
        bare = keras.models.load_model(path, compile=False)
        proxy = forksafe.load_model(path, compile=False)
        row: dict[str, Any] = {"bare": _first_use(context, bare, tf, keras, x)}
        try:
            row["proxy"] = _first_use(context, proxy, tf, keras, x)
        except Exception as exc:
            row["proxy"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        try:
            later = proxy(x)
            row["later_type"] = type(later).__name__
            row["later"] = np.asarray(later)
        except Exception as exc:
            row["later_type"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["info"] = forksafe.info(proxy)
        out[context] = row
    return out


def failed_load_in_a_trace(models: Models, target: str) -> dict[str, Any]:
    """A load that fails inside a trace, then succeeds from a plain frame once the file exists."""
    import shutil

    import tensorflow as tf

    x, _ = models.reference()
    proxy = forksafe.load_model(target)
    try:
        tf.function(lambda t: proxy(t))(tf.constant(x))
        error = None
    except Exception as exc:
        error = str(exc)  # TensorFlow re-raises errors in a trace as its own StagingError
    fresh = forksafe.info(proxy)
    shutil.copy(models.keras, target)
    y = proxy(x)
    return {"error": error, "fresh": fresh, "type": type(y).__name__, "y": np.asarray(y)}


def own_proxy_in_a_trace() -> str:
    """A factory that uses its own proxy, first used inside a trace: an error, not a deadlock."""
    import tensorflow as tf

    holder: list[forksafe.ModelProxy] = []

    def factory() -> Any:
        return holder[0].something

    holder.append(forksafe.lazy_model(factory))
    try:
        tf.function(lambda t: holder[0](t))(tf.constant(1.0))
    except forksafe.ForkSafeError as exc:
        return str(exc)
    return "no error"


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_first_use_inside_traced_code_loads_the_eager_model(models: Models, flavor: str) -> None:
    """tf.function, Dataset.map, a train_step teacher, a Lambda layer: same answer as bare.

    Afterwards a plain call returns an eager tensor: the model was not
    built in the caller's function graph, and no TF1 graph owns it.
    """
    _, reference = models.reference()
    result = run_clean(first_use_in_traced_code, models, flavor, timeout=240).get()
    for context, row in result.items():
        assert not isinstance(row["proxy"], str), f"{context}: {row['proxy']}"
        np.testing.assert_allclose(row["proxy"], row["bare"], atol=1e-5, err_msg=context)
        assert row["later_type"] == "EagerTensor", f"{context}: {row['later_type']}"
        np.testing.assert_allclose(row["later"], reference, atol=1e-5, err_msg=context)
        assert row["info"].loads == 1 and not row["info"].graph_mode, context


def test_failed_load_inside_a_trace_leaves_the_proxy_fresh(models: Models, tmp_path: Any) -> None:
    """A load that fails inside a trace leaves an unloaded proxy that later loads eagerly."""
    _, reference = models.reference()
    target = str(tmp_path / "later.keras")
    result = run_clean(failed_load_in_a_trace, models, target).get()
    assert result["error"] is not None and "model file not found" in result["error"]
    assert not result["fresh"].loaded and result["fresh"].loads == 0
    assert result["type"] == "EagerTensor"
    np.testing.assert_allclose(result["y"], reference, atol=1e-5)


def test_factory_using_its_own_proxy_inside_a_trace_is_an_error() -> None:
    """The self-use check holds when the load runs on a thread of its own."""
    message = run_clean(own_proxy_in_a_trace, timeout=120).get()
    assert "must not use its own proxy" in message
