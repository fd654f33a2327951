"""A proxy that is only being passed around stays unloaded: what engines do while shipping it.

Dask, Ray and Spark inspect what they ship before pickling it: cloudpickle
asks ``isinstance(obj, types.FunctionType)``, Dask asks ``isinstance(obj,
GraphNode)``, ``getattr(obj, "__dask_future__")``, tokenizes it and reads
its module. None of that is a use of the model, so none of it may load it in
a driver or a Dask scheduler, processes that import no framework. Each check
runs in a spawned interpreter that has imported none (the test process may
have), on a framework-free model, so a load shows in ``forksafe.info``.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.support import requires
from tests.support.children import fork_call, run_clean, run_python
from tests.support.fakes import NumpyModel

X = np.arange(6, dtype="float32").reshape(3, 2)


def framework_free(check: Callable[[], Any]) -> Any:
    """Run ``check`` in a spawned interpreter that imported no framework; return its result."""
    return run_clean(_no_framework_then, check, spawn=True, timeout=120).get()


def _no_framework_then(check: Callable[[], Any]) -> Any:
    imported = [m for m in ("tensorflow", "keras", "tf_keras", "jax", "torch") if m in sys.modules]
    assert not imported, imported
    return check()


def unloaded(scale: float = 3.0, **options: Any) -> forksafe.ModelProxy:
    """A fresh proxy of a framework-free model, not loaded."""
    return forksafe.lazy_model(NumpyModel, scale, **options)


def assert_unloaded(proxy: forksafe.ModelProxy) -> None:
    """The proxy has never loaded its model in this process."""
    info = forksafe.info(proxy)
    assert not info.loaded and info.loads == 0, info


def score(model: Any, x: np.ndarray) -> Any:
    """A task function that takes the model as an argument."""
    return model.predict(x)


def class_until_loaded() -> None:
    """ModelProxy until a use; the model's class after."""
    proxy = unloaded()
    assert proxy.__class__ is forksafe.ModelProxy
    assert isinstance(proxy, forksafe.ModelProxy)
    assert not isinstance(proxy, types.FunctionType | types.ModuleType | NumpyModel)
    assert_unloaded(proxy)
    proxy.predict(X)
    assert proxy.__class__ is NumpyModel
    assert isinstance(proxy, NumpyModel) and isinstance(proxy, forksafe.ModelProxy)


def test_class_is_the_proxy_until_loaded() -> None:
    """Without a framework imported, ``__class__`` is ModelProxy until the model loads."""
    framework_free(class_until_loaded)


def child_class(proxy: forksafe.ModelProxy) -> tuple[str, bool]:
    """In a fork child: the proxy's class, and whether its model is loaded here."""
    return proxy.__class__.__name__, forksafe.info(proxy).loaded


def class_in_a_fork_child() -> None:
    """Loaded in the parent; the child sees ModelProxy."""
    proxy = unloaded()
    proxy.predict(X)
    assert fork_call(child_class, proxy).get() == ("ModelProxy", False)
    assert proxy.__class__ is NumpyModel  # the parent keeps its model


def test_class_is_the_proxy_again_in_a_fork_child() -> None:
    """A fork child, which forgets the parent's model, sees the proxy's class until it loads."""
    framework_free(class_in_a_fork_child)


def class_where_keras_is_imported() -> tuple[bool, bool]:
    """``isinstance`` against a Keras class, and whether it loaded."""
    import keras

    proxy = unloaded()
    checked = isinstance(proxy, keras.Model)
    return checked, forksafe.info(proxy).loaded


def test_class_loads_where_a_framework_is_imported() -> None:
    """Where a framework is imported, the class is a use (Keras checks it): it loads."""
    assert run_clean(class_where_keras_is_imported).get() == (False, True)


class Probed:
    """A model with a dunder attribute of its own."""

    __custom_protocol__ = "answered by the model"


def test_dunder_probes_answer_without_loading() -> None:
    """Engines probe dunder names; on an unloaded proxy they are missing, once loaded forwarded."""
    proxy = forksafe.lazy_model(Probed)
    assert getattr(proxy, "__dask_future__", False) is False
    assert not hasattr(proxy, "__dask_graph__")
    assert not hasattr(proxy, "__custom_protocol__")
    with pytest.raises(AttributeError, match="__custom_protocol__"):
        proxy.__custom_protocol__  # noqa: B018
    assert proxy.__dask_tokenize__ is not None  # the proxy's own
    assert_unloaded(proxy)
    assert not hasattr(proxy, "no_such_attribute")  # a plain name: a use, it loads
    assert forksafe.info(proxy).loaded
    assert proxy.__custom_protocol__ == "answered by the model"


def test_plain_names_still_load() -> None:
    """A plain attribute is a use of the model: it loads, as before."""
    proxy = unloaded()
    assert proxy.scale == 3.0
    assert forksafe.info(proxy).loads == 1


def cloudpickle_ships() -> None:
    """cloudpickle the proxy three ways; nothing loads until the receivers use it."""
    import cloudpickle

    proxy = unloaded()
    shipped = [
        cloudpickle.dumps(proxy),
        cloudpickle.dumps(lambda x: proxy.predict(x)),
        cloudpickle.dumps(functools.partial(score, proxy)),
    ]
    assert_unloaded(proxy)
    received = [pickle.loads(data) for data in shipped]
    np.testing.assert_allclose(received[0].predict(X), X * 3.0)
    np.testing.assert_allclose(received[1](X), X * 3.0)
    np.testing.assert_allclose(received[2](X), X * 3.0)
    assert_unloaded(proxy)


def test_cloudpickle_ships_the_proxy_unloaded() -> None:
    """cloudpickle: the proxy itself, in a closure and in a partial; none loads in the sender."""
    requires.package("cloudpickle")
    framework_free(cloudpickle_ships)


def dask_tokens() -> str:
    """Dask's tokens of proxies; the token of the first."""
    from dask.tokenize import tokenize

    proxy = unloaded()
    token: str = tokenize(proxy)
    assert_unloaded(proxy)
    assert token == tokenize(unloaded())
    assert token != tokenize(unloaded(4.0))
    assert token != tokenize(unloaded(isolation="process"))
    proxy.predict(X)
    assert tokenize(proxy) == token
    return token


def test_dask_tokenize_is_deterministic_and_never_loads() -> None:
    """The token comes from the source and options: equal for equal sources, loaded or not."""
    requires.package("dask.tokenize")
    token = framework_free(dask_tokens)
    code = """
        import forksafe
        from dask.tokenize import tokenize
        from tests.support.fakes import NumpyModel
        print(tokenize(forksafe.lazy_model(NumpyModel, 3.0)))
    """
    assert run_python(code, timeout=120) == token  # another interpreter agrees


def dask_serializes() -> None:
    """distributed's serializers and a task spec; nothing loads until used."""
    from dask._task_spec import Task, parse_input
    from distributed.protocol import deserialize, serialize, to_serialize
    from distributed.protocol.pickle import dumps, loads

    proxy = unloaded()
    header, frames = serialize(proxy)
    serialize(to_serialize(proxy))
    task = Task("k", score, *parse_input((proxy, X)))
    spec = loads(dumps(task))
    assert_unloaded(proxy)
    np.testing.assert_allclose(deserialize(header, frames).predict(X), X * 3.0)
    np.testing.assert_allclose(spec({}), X * 3.0)
    assert_unloaded(proxy)


def test_dask_serializers_and_task_specs_never_load() -> None:
    """distributed's serialize (as scatter does), its pickle, and a task spec holding the proxy."""
    requires.package("distributed")
    framework_free(dask_serializes)


def frame_times(frame: Any, model: Any = None) -> Any:
    """A map_partitions function: the frame times the model's scale."""
    return frame * float(model.predict(np.ones(1, dtype="float32"))[0])


def dataframe_ways() -> dict[str, bool]:
    """map_partitions with the proxy passed four ways: whether the client loaded it."""
    import dask.dataframe as dd
    import pandas as pd

    loaded = {}
    for way in ("keyword", "partial", "closure", "positional"):
        proxy = unloaded()
        parts = dd.from_pandas(pd.DataFrame({"a": [1.0, 2.0]}), npartitions=2)
        if way == "keyword":
            out = parts.map_partitions(frame_times, model=proxy, meta=parts._meta)
        elif way == "partial":
            out = parts.map_partitions(
                functools.partial(frame_times, model=proxy), meta=parts._meta
            )
        elif way == "closure":
            out = parts.map_partitions(lambda f, p=proxy: frame_times(f, p), meta=parts._meta)
        else:
            out = parts.map_partitions(frame_times, proxy, meta=parts._meta)
        out.__dask_graph__()
        loaded[way] = forksafe.info(proxy).loaded
        assert out.compute(scheduler="sync")["a"].tolist() == [3.0, 6.0]
    return loaded


def test_dataframe_map_partitions_reads_positional_extras() -> None:
    """dask-expr reads ``.expr`` of positional extra arguments: the one documented way that loads.

    A keyword, a partial or a closure ships the proxy unloaded.
    """
    requires.package("dask.dataframe")
    loaded = framework_free(dataframe_ways)
    assert loaded == {"keyword": False, "partial": False, "closure": False, "positional": True}


def test_getmodule_of_an_unloaded_proxy_loads() -> None:
    """``inspect.getmodule`` reads ``__module__``, which wrapt forwards: a documented use."""
    proxy = unloaded()
    assert inspect.getmodule(proxy) is inspect.getmodule(NumpyModel)
    assert forksafe.info(proxy).loaded


def method_ships() -> None:
    """A method taken from a proxy, pickled and tokenized."""
    import cloudpickle
    from dask.tokenize import tokenize

    proxy = unloaded()
    method = proxy.predict
    assert forksafe.info(proxy).loads == 1
    data = cloudpickle.dumps(method)
    assert tokenize(method) == tokenize(unloaded().predict)
    assert forksafe.info(proxy).loads == 1
    np.testing.assert_allclose(pickle.loads(data)(X), X * 3.0)


def test_a_method_ships_as_its_proxy_and_name() -> None:
    """``proxy.predict`` is a use (it loads where it is read); shipping it adds no load.

    It pickles as ``getattr(proxy, "predict")``: the receiver gets the method of
    the model loaded there, and Dask's token is deterministic.
    """
    requires.package("distributed")
    framework_free(method_ships)


def test_arrivals_of_a_factory_pickled_by_value_share_one_proxy() -> None:
    """A factory or loader defined in ``__main__`` (or a lambda) travels by value, by cloudpickle.

    Every task that brings the proxy brings a copy of the function; the copies
    must still be one proxy per process, or each task loads the model again.
    """
    cloudpickle = requires.package("cloudpickle")
    proxy = forksafe.lazy_model(lambda: NumpyModel(2.0))
    data = cloudpickle.dumps(proxy)
    first, second = pickle.loads(data), pickle.loads(data)
    assert first is second
    first.predict(X)
    assert forksafe.info(second).loads == 1
