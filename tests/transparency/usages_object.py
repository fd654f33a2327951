"""Usages of the model as a Python object: identity, copying, pickling, threads, fork."""

from __future__ import annotations

import copy
import gc
import inspect
import pickle
import threading
import weakref
from typing import Any
from unittest import mock

import numpy as np

from tests.transparency.usages import ALL, EAGER, usage


@usage(host=True)
def truth(m: Any, ctx: Any) -> Any:
    return bool(m), not m


@usage(host=True)
def hash_and_equality(m: Any, ctx: Any) -> Any:
    other = object()
    return hash(m) == hash(m), m == m, m != m, m == other, m != other


@usage(host=True)
def dict_key_and_set_member(m: Any, ctx: Any) -> Any:
    return {m: "model"}[m], m in {m}, m in [m]


@usage()
def type_of(m: Any, ctx: Any) -> Any:
    return type(m).__name__


@usage()
def class_attribute(m: Any, ctx: Any) -> Any:
    return m.__class__.__name__


@usage(host=True)
def dunder_lookup_before_use(m: Any, ctx: Any) -> Any:
    # Engines probe dunder names of what they ship; the model has __weakref__.
    return hasattr(m, "__weakref__"), hasattr(m, "__dask_graph__")


@usage()
def isinstance_of_keras_classes(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    return isinstance(m, keras.Model), isinstance(m, keras.layers.Layer), isinstance(m, int)


@usage()
def repr_and_str(m: Any, ctx: Any) -> Any:
    return repr(m).startswith("<"), str(m) == repr(m)


@usage(host=True)
def callable_and_hasattr(m: Any, ctx: Any) -> Any:
    return callable(m), hasattr(m, "predict"), hasattr(m, "no_such_attribute")


@usage(host=True)
def missing_attribute(m: Any, ctx: Any) -> Any:
    return m.no_such_attribute


@usage()
def dir_lists_methods(m: Any, ctx: Any) -> Any:
    names = dir(m)
    return all(name in names for name in ("predict", "fit", "layers", "save"))


@usage()
def vars_of(m: Any, ctx: Any) -> Any:
    return "_layers" in vars(m) or "_self_tracked_trackables" in vars(m)


@usage()
def copy_copy(m: Any, ctx: Any) -> Any:
    clone = copy.copy(m)
    return clone is m, clone.predict(ctx.x, verbose=0)


@usage()
def deepcopy(m: Any, ctx: Any) -> Any:
    clone = copy.deepcopy(m)
    return clone is m, clone.predict(ctx.x, verbose=0)


@usage()
def copy_keeps_weights_set_in_memory(m: Any, ctx: Any) -> Any:
    m.set_weights([w * 0.5 for w in m.get_weights()])
    return [copy.copy(m).predict(ctx.x, verbose=0), copy.deepcopy(m).predict(ctx.x, verbose=0)]


@usage(EAGER, host=True)
def pickle_round_trip(m: Any, ctx: Any) -> Any:
    return pickle.loads(pickle.dumps(m)).predict(ctx.x, verbose=0)


@usage(EAGER)
def pickle_after_set_weights(m: Any, ctx: Any) -> Any:
    m.set_weights([w * 0.5 for w in m.get_weights()])
    return pickle.loads(pickle.dumps(m)).predict(ctx.x, verbose=0)


@usage(EAGER)
def pickle_twice_in_one_process(m: Any, ctx: Any) -> Any:
    data = pickle.dumps(m)
    return pickle.loads(data) is pickle.loads(data)


@usage(EAGER)
def pickle_a_model_composed_with_it(m: Any, ctx: Any) -> Any:
    keras = ctx.keras
    bigger = keras.Sequential([m, keras.layers.Dense(2, kernel_initializer="ones")])
    bigger.predict(ctx.x, verbose=0)
    return pickle.loads(pickle.dumps(bigger)).predict(ctx.x, verbose=0)


@usage(host=True)
def weak_reference(m: Any, ctx: Any) -> Any:
    ref = weakref.ref(m)
    return ref() is m


@usage(host=True)
def weak_key_dictionary_and_set(m: Any, ctx: Any) -> Any:
    cache: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary({m: "hit"})
    members = weakref.WeakSet([m])
    return cache[m], m in members


@usage()
def weak_reference_dies_with_the_model(m: Any, ctx: Any) -> Any:
    holder = [m]
    ref = weakref.ref(holder[0])
    del holder, m
    gc.collect()
    return ref() is None


@usage()
def signature_of_predict(m: Any, ctx: Any) -> Any:
    return str(inspect.signature(m.predict))


@usage()
def signature_of_call(m: Any, ctx: Any) -> Any:
    return str(inspect.signature(m))


@usage(host=True)
def method_name_and_doc(m: Any, ctx: Any) -> Any:
    return m.predict.__name__, (m.predict.__doc__ or "")[:40]


@usage()
def method_replaced_on_its_class(m: Any, ctx: Any) -> Any:
    """A test's ``mock.patch.object`` on the model's class, after the method was used."""
    first = np.asarray(m.predict_on_batch(ctx.x))
    with mock.patch.object(m.__class__, "predict_on_batch", _patched):
        patched = m.predict_on_batch(ctx.x), m.predict_on_batch(ctx.x)
    return first, patched, np.asarray(m.predict_on_batch(ctx.x))


@usage()
def method_replaced_by_a_mock_on_its_class(m: Any, ctx: Any) -> Any:
    """``mock.patch.object(cls, name)``: the mock is what the model has, and records calls."""
    m.predict_on_batch(ctx.x)
    with mock.patch.object(m.__class__, "predict_on_batch", return_value="mocked") as fake:
        answer = m.predict_on_batch(ctx.x)
        seen = fake.call_count, m.predict_on_batch.call_count
    return answer, seen, np.asarray(m.predict_on_batch(ctx.x))


@usage()
def method_identity_after_its_class_is_patched(m: Any, ctx: Any) -> Any:
    """Whether the model's method is the mock, right after its class was patched."""
    m.predict_on_batch(ctx.x)
    with mock.patch.object(m.__class__, "predict_on_batch", return_value="mocked") as fake:
        return m.predict_on_batch is fake


@usage()
def mock_attribute_after_its_class_is_patched(m: Any, ctx: Any) -> Any:
    """A mock's attribute read through the model, right after its class was patched."""
    m.predict_on_batch(ctx.x)
    with mock.patch.object(m.__class__, "predict_on_batch", return_value="mocked"):
        return m.predict_on_batch.call_count


@usage()
def method_replaced_on_the_model(m: Any, ctx: Any) -> Any:
    """A method set on the model and deleted again, after it was used."""
    first = np.asarray(m.predict_on_batch(ctx.x))
    m.predict_on_batch = lambda x: ("replaced", x.shape)
    replaced = m.predict_on_batch(ctx.x), m.predict_on_batch(ctx.x)
    del m.predict_on_batch
    return first, replaced, np.asarray(m.predict_on_batch(ctx.x))


@usage()
def method_taken_then_replaced_on_its_class(m: Any, ctx: Any) -> Any:
    """A method taken from the model and kept, then its class patched."""
    taken = m.predict_on_batch
    with mock.patch.object(m.__class__, "predict_on_batch", _patched):
        called = taken(ctx.x)
    return called if isinstance(called, tuple) else np.asarray(called)


def _patched(self: Any, x: Any) -> Any:
    return "patched", x.shape


@usage(EAGER, host=True)
def threads_share_the_model(m: Any, ctx: Any) -> Any:
    return _in_threads(lambda: np.asarray(m.predict_on_batch(ctx.x)), 8)


@usage(("tf1",))
def thread_predicts_after_main_loaded(m: Any, ctx: Any) -> Any:
    m.predict(ctx.x, verbose=0)  # loaded and used on the main thread
    return _in_threads(lambda: np.asarray(m.predict(ctx.x, verbose=0)), 2)


@usage(ALL, host=True)
def fork_child_predicts(m: Any, ctx: Any) -> Any:
    import forksafe
    from forksafe.testing import ForkTimeoutError, run_in_fork

    m.predict(ctx.x, verbose=0)  # the parent uses the model, then forks a worker
    # A bare model hangs: 10 s tells. A proxy's child may first start a host
    # template (a framework import: slow on a loaded machine).
    timeout = 90 if isinstance(m, forksafe.ModelProxy) else 10
    try:
        return run_in_fork(lambda: np.asarray(m.predict(ctx.x, verbose=0)), timeout=timeout)
    except ForkTimeoutError:
        return f"hung (killed after {timeout} s)"


def _in_threads(fn: Any, count: int) -> Any:
    results: list[Any] = [None] * count

    def work(index: int) -> None:
        try:
            results[index] = fn()
        except Exception as exc:
            results[index] = type(exc).__name__

    workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    return results
