"""The usages: what users do with a Keras model, written once, run on bare models and proxies.

Each usage takes the model (bare, or a proxy of the same file) and a
``Context`` and returns something comparable. ``flavors`` says where it
applies; ``host`` that it can cross a process boundary, so it also runs
through a model host; ``changes`` that it changes the model (its weights, its
compiled state), so through a shared host it needs a host of its own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ALL = ("keras3", "tf_keras", "tf1")
EAGER = ("keras3", "tf_keras")
KERAS3 = ("keras3",)
TF_KERAS = ("tf_keras", "tf1")


@dataclass(frozen=True)
class Usage:
    """One thing users do with a model."""

    name: str
    fn: Callable[[Any, Any], Any]
    flavors: tuple[str, ...]
    host: bool
    changes: bool


USAGES: list[Usage] = []


def usage(
    flavors: tuple[str, ...] = ALL, host: bool = False, changes: bool = False
) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    """Register a usage under its function's name."""

    def register(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        USAGES.append(Usage(fn.__name__, fn, flavors, host, changes))
        return fn

    return register


def _compiled(m: Any, ctx: Any) -> Any:
    m.compile(optimizer=ctx.keras.optimizers.SGD(0.01), loss="mse")
    return m


def _reload(ctx: Any, path: str) -> Any:
    return np.asarray(ctx.keras.models.load_model(path, compile=False).predict(ctx.x, verbose=0))


# -- calling -----------------------------------------------------------------


@usage(host=True)
def call_numpy(m: Any, ctx: Any) -> Any:
    return m(ctx.x)


@usage(EAGER)
def call_tensor(m: Any, ctx: Any) -> Any:
    return m(ctx.tf.constant(ctx.x))


@usage(EAGER, host=True)
def call_training_false(m: Any, ctx: Any) -> Any:
    return m(ctx.x, training=False)


@usage(host=True)
def predict(m: Any, ctx: Any) -> Any:
    return m.predict(ctx.x, verbose=0)


@usage(host=True)
def predict_batch_size(m: Any, ctx: Any) -> Any:
    return m.predict(ctx.x, batch_size=3, verbose=0)


@usage(host=True)
def predict_with_progress_bar(m: Any, ctx: Any) -> Any:
    return m.predict(ctx.x)


@usage(host=True)
def predict_on_batch(m: Any, ctx: Any) -> Any:
    return m.predict_on_batch(ctx.x)


@usage(EAGER)
def predict_dataset(m: Any, ctx: Any) -> Any:
    return m.predict(ctx.tf.data.Dataset.from_tensor_slices(ctx.x).batch(4), verbose=0)


@usage(EAGER)
def first_use_in_tf_function(m: Any, ctx: Any) -> Any:
    return ctx.tf.function(lambda t: m(t))(ctx.tf.constant(ctx.x))


@usage(EAGER)
def first_use_in_dataset_map(m: Any, ctx: Any) -> Any:
    batches = ctx.tf.data.Dataset.from_tensor_slices(ctx.x).batch(4).map(lambda t: m(t))
    return np.concatenate([np.asarray(b) for b in batches])


@usage(EAGER)
def gradient_tape(m: Any, ctx: Any) -> Any:
    tf = ctx.tf
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(m(tf.constant(ctx.x)))
    return [np.asarray(g) for g in tape.gradient(loss, m.trainable_variables)]


@usage(EAGER)
def optimizer_step_on_trainable_variables(m: Any, ctx: Any) -> Any:
    tf = ctx.tf
    optimizer = ctx.keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(m(tf.constant(ctx.x))))
    grads = tape.gradient(loss, m.trainable_variables)
    optimizer.apply_gradients(zip(grads, m.trainable_variables, strict=True))
    return m.get_weights()


@usage(ALL)
def call_a_sublayer(m: Any, ctx: Any) -> Any:
    return m.layers[0](ctx.x)


@usage(EAGER)
def call_under_a_device_scope(m: Any, ctx: Any) -> Any:
    with ctx.tf.device("/CPU:0"):
        return m(ctx.x)


@usage(ALL)
def unbound_keras_method_with_the_model_as_self(m: Any, ctx: Any) -> Any:
    return ctx.keras.Model.predict(m, ctx.x, verbose=0)


# -- training and evaluating ---------------------------------------------------


@usage(host=False)
def fit(m: Any, ctx: Any) -> Any:
    history = _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    return history.history["loss"]


@usage(host=True, changes=True)
def compile_fit_through_methods(m: Any, ctx: Any) -> Any:
    m.compile(optimizer="sgd", loss="mse")
    m.fit(ctx.x, ctx.y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    return m.predict(ctx.x, verbose=0)


@usage()
def fit_then_predict(m: Any, ctx: Any) -> Any:
    _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    return m.predict(ctx.x, verbose=0)


@usage(EAGER)
def fit_dataset(m: Any, ctx: Any) -> Any:
    data = ctx.tf.data.Dataset.from_tensor_slices((ctx.x, ctx.y)).batch(4)
    return _compiled(m, ctx).fit(data, epochs=1, verbose=0).history["loss"]


@usage()
def evaluate(m: Any, ctx: Any) -> Any:
    return _compiled(m, ctx).evaluate(ctx.x, ctx.y * 0.5, verbose=0)


@usage()
def train_on_batch(m: Any, ctx: Any) -> Any:
    return _compiled(m, ctx).train_on_batch(ctx.x, ctx.y * 0.5)


@usage()
def test_on_batch(m: Any, ctx: Any) -> Any:
    return _compiled(m, ctx).test_on_batch(ctx.x, ctx.y * 0.5)


@usage()
def optimizer_after_compile(m: Any, ctx: Any) -> Any:
    return type(_compiled(m, ctx).optimizer).__name__


@usage()
def callbacks_see_every_epoch(m: Any, ctx: Any) -> Any:
    seen: list[int] = []
    keras = ctx.keras
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=3, verbose=0, callbacks=[callback])
    return seen


@usage()
def callback_predicts_through_the_model(m: Any, ctx: Any) -> Any:
    out: list[Any] = []
    keras = ctx.keras
    callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: out.append(np.asarray(m.predict(ctx.x, verbose=0)))
    )
    _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=1, shuffle=False, verbose=0, callbacks=[callback])
    return out


@usage()
def early_stopping(m: Any, ctx: Any) -> Any:
    stop = ctx.keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=1e9)
    history = _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=5, verbose=0, callbacks=[stop])
    return len(history.history["loss"])


@usage()
def model_checkpoint(m: Any, ctx: Any) -> Any:
    path = ctx.file("ckpt.weights.h5" if ctx.flavor == "keras3" else "ckpt.h5")
    checkpoint = ctx.keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
    _compiled(m, ctx).fit(ctx.x, ctx.y, epochs=1, verbose=0, callbacks=[checkpoint])
    return os.path.getsize(path) > 0


@usage(EAGER)
def custom_train_step_with_the_model_as_teacher(m: Any, ctx: Any) -> Any:
    keras, tf = ctx.keras, ctx.tf

    class Student(keras.Model):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3, kernel_initializer="ones")

        def call(self, inputs: Any) -> Any:
            return self.dense(inputs)

        def train_step(self, data: Any) -> dict[str, Any]:
            target = m(data, training=False)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(data, training=True) - target))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables, strict=True))
            return {"loss": loss}

    student = Student()
    student.compile(optimizer=keras.optimizers.SGD(0.01))
    return student.fit(ctx.x, epochs=2, batch_size=4, shuffle=False, verbose=0).history["loss"]


# -- composing -----------------------------------------------------------------


@usage()
def compose_functional(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, kernel_initializer="ones")(m(inputs))
    return keras.Model(inputs, outputs).predict(ctx.x, verbose=0)


@usage()
def compose_sequential(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    bigger = keras.Sequential([m, keras.layers.Dense(2, kernel_initializer="ones")])
    return bigger.predict(ctx.x, verbose=0)


@usage()
def lambda_layer(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    inputs = keras.Input((4,))
    wrapper = keras.Model(inputs, keras.layers.Lambda(lambda t: m(t))(inputs))
    return wrapper.predict(ctx.x, verbose=0)


@usage(EAGER)
def subclassed_model_holds_it(m: Any, ctx: Any) -> Any:
    keras = ctx.keras

    class Holder(keras.Model):  # type: ignore[misc, name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def call(self, inputs: Any) -> Any:
            return self.inner(inputs) * 2.0

    holder = Holder(m)
    y = holder.predict(ctx.x, verbose=0)
    return y, len(holder.trainable_weights)


@usage()
def composed_model_saved_and_reloaded(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    inputs = keras.Input((4,))
    bigger = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(m(inputs)))
    path = ctx.file("bigger.keras" if ctx.flavor == "keras3" else "bigger.h5")
    bigger.save(path)
    return _reload(ctx, path)


@usage()
def clone_model(m: Any, ctx: Any) -> Any:
    clone = ctx.keras.models.clone_model(m)
    clone.set_weights(m.get_weights())
    return clone.predict(ctx.x, verbose=0), type(clone).__name__


@usage()
def model_from_config(m: Any, ctx: Any) -> Any:
    rebuilt = type(m).from_config(m.get_config())
    rebuilt.set_weights(m.get_weights())
    return rebuilt.predict(ctx.x, verbose=0)


@usage()
def model_from_json(m: Any, ctx: Any) -> Any:
    rebuilt = ctx.keras.models.model_from_json(m.to_json())
    rebuilt.set_weights(m.get_weights())
    return rebuilt.predict(ctx.x, verbose=0)


# -- saving ----------------------------------------------------------------------


@usage(host=True)
def save_keras_format(m: Any, ctx: Any) -> Any:
    path = ctx.file("model.keras")
    m.save(path)
    return _reload(ctx, path)


@usage(host=True)
def save_h5(m: Any, ctx: Any) -> Any:
    path = ctx.file("model.h5")
    m.save(path)
    return _reload(ctx, path)


@usage(host=True, changes=True)
def save_and_load_weights(m: Any, ctx: Any) -> Any:
    path = ctx.file("model.weights.h5")
    m.save_weights(path)
    m.set_weights([w * 0 for w in m.get_weights()])
    m.load_weights(path)
    return m.predict(ctx.x, verbose=0)


@usage(KERAS3, host=True)
def export_saved_model(m: Any, ctx: Any) -> Any:
    path = ctx.file("exported")
    m.export(path, verbose=False)
    layer = ctx.keras.layers.TFSMLayer(path, call_endpoint="serve")
    return layer(ctx.x)


@usage(EAGER)
def tf_saved_model_save(m: Any, ctx: Any) -> Any:
    path = ctx.file("tfsaved")
    ctx.tf.saved_model.save(m, path)
    return sorted(os.listdir(path))


@usage(TF_KERAS)
def tf_keras_saved_model_format(m: Any, ctx: Any) -> Any:
    path = ctx.file("savedmodel_dir")
    m.save(path, save_format="tf")
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


@usage(host=True)
def to_json(m: Any, ctx: Any) -> Any:
    return json.loads(m.to_json())


@usage()
def get_config(m: Any, ctx: Any) -> Any:
    return m.get_config()


@usage(KERAS3)
def serialize_keras_object(m: Any, ctx: Any) -> Any:
    return ctx.keras.saving.serialize_keras_object(m)


@usage()
def summary(m: Any, ctx: Any) -> Any:
    lines: list[str] = []
    m.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    return len(lines) > 3 and any("hidden" in line or "dense" in line for line in lines)


# -- attributes and weights ---------------------------------------------------------


@usage(host=True)
def attributes(m: Any, ctx: Any) -> Any:
    return m.name, m.trainable, m.built, m.dtype, len(m.weights)


@usage()
def shapes(m: Any, ctx: Any) -> Any:
    return str(m.input_shape), str(m.output_shape), [str(t.shape) for t in m.inputs]


@usage()
def layers(m: Any, ctx: Any) -> Any:
    return [type(layer).__name__ for layer in m.layers], m.get_layer(index=0).name


@usage(host=True)
def count_params(m: Any, ctx: Any) -> Any:
    return m.count_params()


@usage(host=True, changes=True)
def get_and_set_weights(m: Any, ctx: Any) -> Any:
    m.set_weights([w * 2 for w in m.get_weights()])
    return m.get_weights(), m.predict(ctx.x, verbose=0)


@usage(host=True, changes=True)
def set_trainable(m: Any, ctx: Any) -> Any:
    m.trainable = False
    return m.trainable, len(m.trainable_weights)


@usage()
def set_and_delete_an_attribute(m: Any, ctx: Any) -> Any:
    m.tag = "mine"
    before = m.tag
    del m.tag
    return before, hasattr(m, "tag")


@usage()
def sublayer_weights(m: Any, ctx: Any) -> Any:
    return m.layers[-1].get_weights()


@usage(KERAS3)
def clear_session_then_predict(m: Any, ctx: Any) -> Any:
    m.predict_on_batch(ctx.x)
    ctx.keras.backend.clear_session()
    return m.predict_on_batch(ctx.x)


@usage(TF_KERAS)
def tf_keras_clear_session_then_predict(m: Any, ctx: Any) -> Any:
    m.predict(ctx.x, verbose=0)
    ctx.keras.backend.clear_session()
    return m.predict(ctx.x, verbose=0)


# The object protocol, copying, pickling, threads and fork.
from tests.transparency import usages_object  # noqa: E402, F401
