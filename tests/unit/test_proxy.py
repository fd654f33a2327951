"""The proxy in one process: lazy, loads once under racing threads, forwards everything."""

from __future__ import annotations

import copy
import pickle
import threading
from unittest import mock

import numpy as np
import pytest

import forksafe
import forksafe.testing
from tests.models import KERAS_BACKEND, Models
from tests.support.fakes import NumpyModel


@pytest.fixture
def keras_proxy(models: Models) -> forksafe.ModelProxy:
    """A fresh, unloaded proxy of the tiny .keras model."""
    return forksafe.load_model(models.keras)


def test_nothing_loads_until_first_use(keras_proxy: forksafe.ModelProxy) -> None:
    """Creation, repr, str and info never load."""
    assert "not loaded" in repr(keras_proxy)
    assert "not loaded" in str(keras_proxy)
    info = forksafe.info(keras_proxy)
    assert not info.loaded
    assert info.loads == 0
    assert info.owner_pid is None
    assert info.backend is None
    assert info.isolation == "auto"


@pytest.mark.parametrize(
    "fmt",
    ["keras", "h5", pytest.param("savedmodel", marks=pytest.mark.keras_backend("tensorflow"))],
)
def test_every_format_predicts_the_reference(models: Models, fmt: str) -> None:
    """.keras, .h5 and a SavedModel directory all answer predict/predict_on_batch/__call__."""
    import keras

    x, reference = models.reference()
    proxy = forksafe.load_model(getattr(models, fmt))
    np.testing.assert_allclose(proxy.predict_on_batch(x), reference, atol=1e-5)
    np.testing.assert_allclose(proxy.predict(x, verbose=0), reference, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(proxy(x)), reference, atol=1e-5)
    info = forksafe.info(proxy)
    assert info.loaded
    assert info.loads == 1
    assert info.backend == KERAS_BACKEND
    assert not info.graph_mode


def test_loaded_proxy_is_the_model(keras_proxy: forksafe.ModelProxy) -> None:
    """isinstance, attributes, layers and method calls reach the real model."""
    import keras

    assert isinstance(keras_proxy, keras.Model)
    assert isinstance(keras_proxy, forksafe.ModelProxy)
    assert keras_proxy.name == "tiny"
    assert [layer.name for layer in keras_proxy.layers] == ["hidden", "out"]
    assert keras_proxy.input_shape == (None, 4)
    assert len(keras_proxy.get_weights()) == 4
    assert f"loaded in pid {forksafe.info(keras_proxy).owner_pid}" in repr(keras_proxy)


def test_setattr_and_delattr_reach_the_model(keras_proxy: forksafe.ModelProxy) -> None:
    """Setting an attribute on the proxy sets it on this process's model."""
    keras_proxy.trainable = False
    assert keras_proxy.__wrapped__.trainable is False
    keras_proxy.custom_tag = "x"
    assert keras_proxy.__wrapped__.custom_tag == "x"
    del keras_proxy.custom_tag
    assert not hasattr(keras_proxy.__wrapped__, "custom_tag")


def test_missing_proxy_state_is_attribute_error_without_loading() -> None:
    """A typo in a _self_ name is an AttributeError and loads nothing."""
    proxy = forksafe.lazy_model(NumpyModel)
    with pytest.raises(AttributeError, match="_self_nope"):
        proxy._self_nope  # noqa: B018
    assert not forksafe.info(proxy).loaded


def test_missing_model_attribute_is_the_models_attribute_error() -> None:
    """An attribute the model lacks raises the model's own AttributeError."""
    proxy = forksafe.lazy_model(NumpyModel)
    with pytest.raises(AttributeError, match="no_such_thing"):
        proxy.no_such_thing  # noqa: B018


def test_racing_threads_load_exactly_once(models: Models) -> None:
    """32 threads released together on an unloaded proxy: one load, 32 right answers.

    Keras on JAX's ``predict_on_batch`` fails from concurrent threads on a bare
    model too (31 of 32 threads: "Buffer has been deleted or donated"), so
    there the threads call the model itself.
    """
    import keras

    x, reference = models.reference()
    proxy = forksafe.load_model(models.keras)
    barrier = threading.Barrier(32)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(10)
            y = proxy(x) if KERAS_BACKEND == "jax" else proxy.predict_on_batch(x)
            results.append(keras.ops.convert_to_numpy(y))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 32
    assert forksafe.info(proxy).loads == 1
    for y in results:
        np.testing.assert_allclose(y, reference, atol=1e-5)


def test_lazy_model_passes_arguments() -> None:
    """lazy_model calls factory(*args, **kwargs) once, on first use."""
    proxy = forksafe.lazy_model(NumpyModel, 4.0, delay=0.0)
    assert not forksafe.info(proxy).loaded
    np.testing.assert_array_equal(proxy.predict(np.ones(3)), np.full(3, 4.0))
    assert proxy.scale == 4.0
    assert forksafe.info(proxy).source.endswith("NumpyModel()")
    assert forksafe.info(proxy).backend is None


def test_lazy_model_of_a_keras_factory(models: Models) -> None:
    """A factory that builds a Keras model by code works like a file."""
    from tests.models import build_keras

    x, reference = models.reference()
    proxy = forksafe.lazy_model(build_keras, "built")
    np.testing.assert_allclose(proxy.predict_on_batch(x), reference, atol=1e-5)
    assert proxy.name == "built"


def test_factory_returning_none_is_a_load_error() -> None:
    """A factory that returns None is reported, not cached as a model."""
    proxy = forksafe.lazy_model(lambda: None)
    with pytest.raises(forksafe.ModelLoadError, match="returned None"):
        proxy.predict  # noqa: B018


def test_factory_using_its_own_proxy_is_a_clear_error() -> None:
    """A factory that touches the proxy it is building gets an error, not a deadlock."""
    holder: list[forksafe.ModelProxy] = []

    def factory() -> object:
        return holder[0].something

    holder.append(forksafe.lazy_model(factory))
    with pytest.raises(forksafe.ForkSafeError, match="being loaded"):
        holder[0].predict  # noqa: B018


def test_pickle_ships_the_source_not_the_model(keras_proxy: forksafe.ModelProxy) -> None:
    """A loaded proxy pickles small, and unpickles as another proxy of the same source."""
    keras_proxy.name  # noqa: B018  (load)
    data = pickle.dumps(keras_proxy)
    assert len(data) < 1000
    clone = pickle.loads(data)
    assert isinstance(clone, forksafe.ModelProxy)
    assert clone is not keras_proxy
    assert forksafe.info(clone).source == forksafe.info(keras_proxy).source


def test_unpickling_one_source_again_gives_the_same_proxy() -> None:
    """A proxy that arrives pickled again and again (one task each) loads once per process."""
    proxy = forksafe.lazy_model(NumpyModel, 3.5)  # a source no other test unpickles
    data = pickle.dumps(proxy)
    first = pickle.loads(data)
    assert not forksafe.info(first).loaded
    assert first.scale == 3.5
    again = pickle.loads(pickle.dumps(proxy))
    assert again is first and forksafe.info(again).loads == 1
    other = pickle.loads(pickle.dumps(forksafe.lazy_model(NumpyModel, 3.5, delay=0.0)))
    assert other is not first  # a different source (other arguments) is another proxy


def test_copy_of_an_unloaded_proxy_is_an_unloaded_proxy() -> None:
    """Copying a proxy that is not loaded here loads nothing: the copy loads from the source."""
    proxy = forksafe.lazy_model(NumpyModel)
    for clone in (copy.copy(proxy), copy.deepcopy(proxy)):
        assert isinstance(clone, forksafe.ModelProxy) and clone is not proxy
        assert not forksafe.info(clone).loaded
        assert clone.scale == 2.0
    assert not forksafe.info(proxy).loaded


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_copy_of_a_loaded_proxy_keeps_the_weights_in_memory(
    keras_proxy: forksafe.ModelProxy, models: Models, how: object
) -> None:
    """Weights changed in memory survive copy and deepcopy, as with the bare model's copies."""
    x, _ = models.reference()
    weights = [w * 0.5 for w in keras_proxy.get_weights()]
    keras_proxy.set_weights(weights)
    bare_copy = how(keras_proxy.__wrapped__)  # type: ignore[operator]
    clone = how(keras_proxy)  # type: ignore[operator]
    assert isinstance(clone, forksafe.ModelProxy) and clone is not keras_proxy
    assert forksafe.info(clone).loaded and forksafe.info(clone).loads == 1
    assert clone.__wrapped__ is not keras_proxy.__wrapped__
    for mine, theirs in zip(clone.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(clone.predict_on_batch(x), bare_copy.predict_on_batch(x), atol=1e-6)
    clone.set_weights([w * 0 for w in weights])  # independent of the original
    np.testing.assert_array_equal(keras_proxy.get_weights()[0], weights[0])


def test_deepcopy_keeps_shared_references_shared() -> None:
    """deepcopy's memo holds: one proxy twice in a structure is one copy twice."""
    proxy = forksafe.lazy_model(NumpyModel)
    proxy.scale  # noqa: B018
    pair = copy.deepcopy([proxy, proxy])
    assert pair[0] is pair[1] and pair[0] is not proxy


def test_truth_hash_and_equality_never_load() -> None:
    """bool, hash, ==, != and set/dict membership answer by identity, loading nothing."""
    proxy = forksafe.lazy_model(NumpyModel)
    other = forksafe.lazy_model(NumpyModel)
    assert proxy
    assert hash(proxy) == hash(proxy) and hash(proxy) != hash(other)
    assert proxy.__eq__(proxy) is True and proxy.__ne__(proxy) is False
    assert proxy.__eq__(other) is NotImplemented and proxy.__ne__(other) is NotImplemented
    assert [proxy == proxy, proxy != proxy, proxy == other, proxy != other] == [
        True,
        False,
        False,
        True,
    ]
    assert proxy != 1 and proxy is not None
    assert {proxy: 1}[proxy] == 1 and proxy in {proxy} and other not in {proxy}
    assert not forksafe.info(proxy).loaded and not forksafe.info(other).loaded
    before = hash(proxy)
    proxy.scale  # noqa: B018  (load)
    assert hash(proxy) == before and proxy != proxy.__wrapped__


def identity_across_fork() -> tuple[tuple[int, bool, bool, bool], int]:
    """In a clean process: hash, equality and membership of a proxy reloaded in a fork child."""
    from tests.support.children import fork_call

    proxy = forksafe.lazy_model(NumpyModel)
    proxy.scale  # noqa: B018  (loaded in the parent)
    members = {proxy}

    def child() -> tuple[int, bool, bool, bool]:
        unloaded = not forksafe.info(proxy).loaded
        proxy.scale  # noqa: B018  (reloaded here)
        return hash(proxy), proxy in members, proxy == proxy, unloaded

    return fork_call(child, timeout=30).get(), hash(proxy)


def test_identity_holds_across_a_reload_after_fork() -> None:
    """In a fork child the reloaded proxy keeps its hash, equality and set membership."""
    from tests.support.children import run_clean

    child, parent_hash = run_clean(identity_across_fork, timeout=60).get()
    assert child == (parent_hash, True, True, True)


def test_failed_load_is_retried(tmp_path: object, models: Models) -> None:
    """A load that failed is tried again on the next use, and succeeds once the file exists."""
    import pathlib
    import shutil

    target = pathlib.Path(str(tmp_path)) / "later.keras"
    proxy = forksafe.load_model(target)
    with pytest.raises(forksafe.ModelLoadError, match="not found"):
        proxy.predict_on_batch  # noqa: B018
    shutil.copy(models.keras, target)
    x, reference = models.reference()
    np.testing.assert_allclose(proxy.predict_on_batch(x), reference, atol=1e-5)
    assert forksafe.info(proxy).loads == 1


def test_custom_loader_gets_path_and_kwargs(models: Models) -> None:
    """loader=(path, **kwargs) is called with the absolute path and the load kwargs."""
    import keras

    calls: list[tuple[str, dict[str, object]]] = []

    def loader(path: str, **kwargs: object) -> object:
        calls.append((path, kwargs))
        return keras.models.load_model(path, **kwargs)

    proxy = forksafe.load_model(models.keras, loader=loader, compile=False)
    assert proxy.name == "tiny"
    assert calls == [(models.keras, {"compile": False})]


@pytest.mark.keras_backend("tensorflow", "torch")
def test_tensorflow_models_take_no_call_lock(keras_proxy: forksafe.ModelProxy) -> None:
    """Only backends that cannot take concurrent calls pay for a lock; TensorFlow does not."""
    keras_proxy.name  # noqa: B018  (load)
    assert keras_proxy._self_held is not None and keras_proxy._self_held.call_lock is None


def test_tiny_model_is_a_path(models: Models) -> None:
    """forksafe.testing.TinyModel is os.PathLike: load_model accepts it as it is."""
    import os

    x, y = models.reference()
    tiny = forksafe.testing.TinyModel(path=models.keras, format="keras", x=x, y=y)
    assert os.fspath(tiny) == models.keras
    proxy = forksafe.load_model(tiny)
    assert forksafe.info(proxy).source == models.keras
    np.testing.assert_allclose(proxy.predict_on_batch(tiny.x), tiny.y, atol=1e-5)


@pytest.mark.keras_backend("jax")
def test_keras_on_jax_predict_on_batch_from_threads(models: Models) -> None:
    """16 threads x 5 predict_on_batch calls on one loaded proxy: every answer right."""
    x, reference = models.reference()
    proxy = forksafe.load_model(models.keras)
    proxy.predict_on_batch(x)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait(10)
            for _ in range(5):
                np.testing.assert_allclose(proxy.predict_on_batch(x), reference, atol=1e-5)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:1]


def test_a_method_replaced_behind_the_proxy_is_what_calls_reach() -> None:
    """Replaced on the model itself or on its class after use: calls reach the replacement.

    The proxy keeps a method of the model's class once used; a replacement it
    did not see (a test's ``mock.patch.object`` on the class, an attribute set
    on the bare model) is what the next call reaches, and what the proxy gives
    from then on.
    """
    proxy = forksafe.lazy_model(NumpyModel, isolation="inprocess")
    x = np.arange(3.0)
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0)
    model = proxy.__wrapped__
    model.predict = lambda x: "set on the model"
    assert proxy.predict(x) == "set on the model"
    del model.predict
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0)
    with mock.patch.object(NumpyModel, "predict", return_value="mocked") as fake:
        assert proxy.predict(x) == "mocked"
        assert proxy.predict is fake
        fake.assert_called_once_with(x)
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0)
    proxy.predict = len
    assert proxy.predict is len and model.predict is len
    del proxy.predict
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0)
