"""Scenarios that run inside a clean process (see ``children.run_clean``).

They are module-level so a forkserver or spawn child can import them; each
returns plain data for the test to assert on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

import forksafe
from tests.models import Models
from tests.support.children import fork_call
from tests.support.fakes import HostProbe, NumpyModel

CHILD_TIMEOUT = 30.0
# An op on the suite's Keras backend starts its runtime: any op for TensorFlow
# and JAX, one large enough to split across torch's CPU pool for torch.
BIG = (1000, 1000)


def start_runtime() -> None:
    """Run one large matmul through Keras (whatever its backend)."""
    import keras

    keras.ops.convert_to_numpy(keras.ops.matmul(keras.ops.ones(BIG), keras.ops.ones(BIG)))


def predict_in_child(proxy: Any, x: np.ndarray) -> dict[str, Any]:
    """Predict through the proxy and report its state before and after."""
    before = forksafe.info(proxy)
    y = proxy.predict_on_batch(x)
    return {
        "before": before,
        "after": forksafe.info(proxy),
        "y": np.asarray(y),
        "pid": os.getpid(),
        "state": forksafe.runtime_state(),
    }


def use_in_child(proxy: Any, x: np.ndarray) -> Any:
    """Predict through the proxy."""
    return proxy.predict_on_batch(x)


def untouched_parent(models: Models) -> dict[str, Any]:
    """Parent only created the proxy; the child loads and predicts."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras)
    child = fork_call(predict_in_child, proxy, x, timeout=CHILD_TIMEOUT).get()
    parent_before = forksafe.info(proxy)
    parent_state = forksafe.runtime_state().tensorflow
    parent_y = np.asarray(proxy.predict_on_batch(x))
    return {
        "child": child,
        "parent_before": parent_before,
        "parent_state": parent_state,
        "parent_y": parent_y,
    }


def touched_parent(models: Models) -> dict[str, Any]:
    """Parent ran one framework op before forking; the child must fail fast."""
    import keras

    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="inprocess")
    line = sys._getframe().f_lineno + 1
    keras.ops.convert_to_numpy(keras.ops.matmul(keras.ops.ones(BIG), keras.ops.ones(BIG)))
    outcome = fork_call(use_in_child, proxy, x, timeout=CHILD_TIMEOUT)
    return {
        "error": outcome.error,
        "elapsed": outcome.elapsed,
        "where": f"{__file__}:{line}",
        "parent_pid": os.getpid(),
    }


def loaded_parent(models: Models) -> dict[str, Any]:
    """Parent loaded through the proxy; the child forgets that model and fails fast."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="inprocess")
    proxy.predict_on_batch(x)

    def child() -> Any:
        before = forksafe.info(proxy)
        try:
            proxy.predict_on_batch(x)
        except forksafe.InheritedRuntimeError as exc:
            return before, exc
        return before, None

    outcome = fork_call(child, timeout=CHILD_TIMEOUT)
    return {"child": outcome.get(), "elapsed": outcome.elapsed, "parent": forksafe.info(proxy)}


def numpy_model_never_reused() -> dict[str, Any]:
    """A framework-free model loaded in the parent is rebuilt in the child, and its grandchild."""
    proxy = forksafe.lazy_model(NumpyModel, 3.0)
    parent_built_in = proxy.built_in

    def child() -> dict[str, Any]:
        first = forksafe.info(proxy)
        built_in = proxy.built_in
        grandchild = fork_call(
            lambda: (
                forksafe.info(proxy).loaded,
                proxy.built_in,
                os.getpid(),
                forksafe.info(proxy),
            ),
            timeout=10,
        ).get()
        return {
            "first": first,
            "built_in": built_in,
            "pid": os.getpid(),
            "grandchild": grandchild,
            "y": proxy.predict(np.ones(2)),
        }

    return {
        "parent_pid": os.getpid(),
        "parent_built_in": parent_built_in,
        "child": fork_call(child, timeout=CHILD_TIMEOUT).get(),
    }


def fork_while_loading(delay: float) -> dict[str, Any]:
    """Another thread holds the load lock (inside the factory) while this thread forks."""
    proxy = forksafe.lazy_model(NumpyModel, 5.0, delay=delay)
    loader = threading.Thread(target=lambda: proxy.predict, daemon=True)
    loader.start()
    deadline = time.monotonic() + 5
    while proxy._self_loading is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proxy._self_loading is not None, "the loading thread never started loading"

    def child() -> dict[str, Any]:
        start = time.monotonic()
        return {
            "built_in": proxy.built_in,
            "pid": os.getpid(),
            "seconds": time.monotonic() - start,
            "info": forksafe.info(proxy),
        }

    outcome = fork_call(child, timeout=CHILD_TIMEOUT)
    loader.join(CHILD_TIMEOUT)
    return {"child": outcome.get(), "parent": forksafe.info(proxy)}


def fork_while_keras_loads(models: Models) -> dict[str, Any]:
    """Fork while another thread is inside Keras' load: the child answers or refuses, at once."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="inprocess")
    loader = threading.Thread(target=lambda: proxy.predict_on_batch(x), daemon=True)
    loader.start()
    deadline = time.monotonic() + 10
    while proxy._self_loading is None and proxy._self_held is None and time.monotonic() < deadline:
        time.sleep(0.001)
    outcome = fork_call(use_in_child, proxy, x, timeout=CHILD_TIMEOUT)
    loader.join(CHILD_TIMEOUT)
    return {"value": outcome.value, "error": outcome.error, "elapsed": outcome.elapsed}


def child_of_untouched_child(models: Models) -> dict[str, Any]:
    """Grandchildren: a fork of an untouched fork loads; a fork of a loaded fork refuses."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="inprocess")

    def child() -> dict[str, Any]:
        clean = fork_call(use_in_child, proxy, x, timeout=CHILD_TIMEOUT)
        proxy.predict_on_batch(x)
        start_runtime()  # the child now starts the runtime itself (torch: its pool)
        poisoned = fork_call(use_in_child, proxy, x, timeout=CHILD_TIMEOUT)
        return {"clean": clean.get(), "poisoned": poisoned.error, "child_pid": os.getpid()}

    return fork_call(child, timeout=2 * CHILD_TIMEOUT).get()  # type: ignore[no-any-return]


def graph_mode(models: Models, user_session: bool) -> dict[str, Any]:
    """TF1 graph mode with tf_keras: predict from another thread after ``clear_session()``."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    import tf_keras

    tf.compat.v1.disable_eager_execution()
    x, _ = models.reference()
    proxy = forksafe.load_model(models.tf_keras_h5, compile=False)
    session = None
    if user_session:
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default(), session.as_default():
            proxy.predict  # noqa: B018  (first use loads, inside the caller's session)
    main_y = proxy.predict(x)
    bare = proxy.__wrapped__
    tf_keras.backend.clear_session()
    results: dict[str, Any] = {}

    def other_thread() -> None:
        try:
            bare.predict(x)
            results["bare"] = None
        except Exception as exc:
            results["bare"] = type(exc).__name__
        results["predict"] = proxy.predict(x)
        results["predict_on_batch"] = proxy.predict_on_batch(x)
        results["weights"] = len(proxy.get_weights())

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(60)
    info = forksafe.info(proxy)
    return {
        "main": main_y,
        "thread": results,
        "info": info,
        "owned_by_user": session is not None and proxy._self_held.owner.session is session,
    }


def spawn_worker(proxy: Any, x: np.ndarray) -> dict[str, Any]:
    """Runs in a spawn worker: the proxy arrived pickled and loads here."""
    before = forksafe.info(proxy)
    y = np.asarray(proxy.predict_on_batch(x))
    return {"before": before, "after": forksafe.info(proxy), "y": y, "pid": os.getpid()}


def raw_fork_backstop(use_gevent: bool) -> dict[str, Any]:
    """Fork with libc's ``fork()``, which skips Python's at-fork hooks entirely."""
    import ctypes
    import pickle
    import select

    if use_gevent:
        import gevent.hub  # imported before the fork, as a gevent program would have
    libc = ctypes.CDLL(None, use_errno=True)
    loaded = forksafe.lazy_model(NumpyModel)
    loaded.predict  # noqa: B018
    unloaded = forksafe.lazy_model(NumpyModel)
    read_fd, write_fd = os.pipe()
    pid = libc.fork()
    if pid == 0:
        try:
            seen: dict[str, Any] = {"pid": os.getpid()}
            if use_gevent:
                gevent.hub.reinit()
            seen["loaded_first"] = loaded.built_in
            seen["unloaded"] = unloaded.built_in  # resolution: the pid check runs here
            seen["loaded_after"] = loaded.built_in
            seen["generation"] = forksafe.info(loaded).generation
            os.write(write_fd, pickle.dumps(seen))
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], CHILD_TIMEOUT)
        data = os.read(read_fd, 1 << 16) if ready else b""
    finally:
        os.close(read_fd)
        if not data:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert data, "raw-forked child gave no answer"
    return {"parent_pid": os.getpid(), "child": pickle.loads(data)}


def child_runtime_state(models: Models) -> dict[str, Any]:
    """runtime_state() in parent and child after the parent loaded through a proxy."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras)
    line = sys._getframe().f_lineno + 1
    proxy.predict_on_batch(x)
    child = fork_call(forksafe.runtime_state, timeout=CHILD_TIMEOUT).get()
    return {"parent": forksafe.runtime_state(), "child": child, "where": f"{__file__}:{line}"}


def printing_factory(text: str) -> HostProbe:
    """A factory that prints while it builds, as real apps' loaders do."""
    print(f"{text}: building the model")
    return HostProbe()


def poisoned_child_isolations(models: Models) -> dict[str, Any]:
    """Parent ran predict with plain Keras; the child tries each isolation."""
    import warnings

    import keras

    x, _ = models.reference()
    bare = keras.models.load_model(models.keras)
    reference = bare.predict(x, verbose=0)
    start_runtime()  # predict started TensorFlow and JAX; torch needs a large op
    proxies = {
        iso: forksafe.load_model(models.keras, isolation=iso)
        for iso in ("auto", "process", "inprocess")
    }

    def child() -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["auto"] = proxies["auto"].predict(x, verbose=0)
            out["auto_again"] = proxies["auto"].predict_on_batch(x)
            out["auto_info"] = forksafe.info(proxies["auto"])
            out["process"] = np.asarray(proxies["process"](x))
            out["process_info"] = forksafe.info(proxies["process"])
            try:
                proxies["inprocess"].predict(x)
                out["inprocess"] = None
            except forksafe.InheritedRuntimeError as exc:
                out["inprocess"] = exc
        out["warnings"] = [(w.category.__name__, str(w.message)) for w in caught]
        out["started_here"] = forksafe.runtime_state()
        return out

    return {
        "reference": reference,
        "parent_pid": os.getpid(),
        "child": fork_call(child, timeout=120).get(),
    }


# -- plain torch and JAX models ------------------------------------------------

ISOLATIONS = ("auto", "process", "inprocess")


def as_numpy(value: Any) -> np.ndarray:
    """A model's answer as numpy: in-process torch answers are tensors that need grad."""
    detach = getattr(value, "detach", None)
    return np.asarray(detach() if callable(detach) else value)


def big_torch_op() -> None:
    """A matmul large enough for torch to split across its OpenMP pool (which it starts)."""
    import torch

    a = torch.randn(1000, 1000)
    _ = a @ a


def _parent_runs(parent_did: str) -> int | None:
    """Do ``parent_did`` with torch (or JAX) here; the line that starts a runtime."""
    line = None
    if parent_did == "large op":
        line = sys._getframe().f_lineno + 1
        big_torch_op()
    elif parent_did == "small op":
        import torch  # here: the JAX case runs without torch installed

        _ = torch.ones(100) + 1
    elif parent_did == "large op in a finished thread":
        thread = threading.Thread(target=big_torch_op)
        thread.start()
        thread.join(60)
    elif parent_did == "large op, one thread":
        import torch

        torch.set_num_threads(1)
        big_torch_op()
    elif parent_did == "JAX op":
        import jax.numpy as jnp

        line = sys._getframe().f_lineno + 1
        jnp.ones(3).block_until_ready()
    return line


def _use_each(proxies: dict[str, Any], x: Any) -> dict[str, Any]:
    """In a fork child: call each proxy; record answers, errors, timings and warnings."""
    import warnings

    out: dict[str, Any] = {"pid": os.getpid()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for iso, proxy in proxies.items():
            start = time.monotonic()
            try:
                out[iso] = as_numpy(proxy(x))
            except forksafe.ForkSafeError as exc:
                out[iso] = exc
            out[f"{iso}_seconds"] = time.monotonic() - start
            out[f"{iso}_info"] = forksafe.info(proxy)
    out["warnings"] = [str(w.message) for w in caught if w.category is forksafe.ForkSafeWarning]
    out["state"] = forksafe.runtime_state()
    return out


def torch_parent(parent_did: str) -> dict[str, Any]:
    """Parent imports forksafe then torch and does ``parent_did``; a child uses each isolation.

    The proxies hold a plain ``nn.Module`` built by a factory, called with a
    torch tensor.
    """
    import torch

    from tests.models import SEED, build_torch, numpy_forward

    x = np.random.default_rng(SEED + 1).standard_normal((8, 4)).astype("float32")
    proxies = {iso: forksafe.lazy_model(build_torch, isolation=iso) for iso in ISOLATIONS}
    line = _parent_runs(parent_did)
    child = fork_call(_use_each, proxies, torch.from_numpy(x), timeout=120).get()
    return {
        "reference": numpy_forward(x),
        "parent_pid": os.getpid(),
        "parent_state": forksafe.runtime_state(),
        "threads": torch.get_num_threads(),
        "where": f"{__file__}:{line}",
        "child": child,
    }


def torch_child_large_op(one_thread: bool) -> dict[str, Any]:
    """Without forksafe: the parent ran a large op; whether a child can run another."""
    import torch

    big_torch_op()

    def child() -> bool:
        if one_thread:
            torch.set_num_threads(1)
        big_torch_op()
        return True

    outcome = fork_call(child, timeout=5)
    # Three outcomes, kept apart: a child that crashed did not hang.
    return {
        "outcome": outcome.kind,
        "error": repr(outcome.error),
        "threads": torch.get_num_threads(),
    }


def jax_parent(parent_ran_jax: bool) -> dict[str, Any]:
    """Parent imports forksafe then JAX; a child uses a JAX-function model each way."""
    from tests.models import SEED, build_jax, numpy_forward

    x = np.random.default_rng(SEED + 1).standard_normal((8, 4)).astype("float32")
    proxies = {iso: forksafe.lazy_model(build_jax, isolation=iso) for iso in ISOLATIONS}
    line = _parent_runs("JAX op") if parent_ran_jax else None
    child = fork_call(_use_each, proxies, x, timeout=120).get()
    return {
        "reference": numpy_forward(x),
        "parent_pid": os.getpid(),
        "parent_state": forksafe.runtime_state(),
        "where": f"{__file__}:{line}",
        "child": child,
    }


def spawned_factory_model(name: str) -> dict[str, Any]:
    """A proxy of a torch or JAX factory, pickled to a spawn worker: it loads there."""
    import multiprocessing

    from tests import models

    factory = {"torch": models.build_torch, "jax": models.build_jax}[name]
    x = np.random.default_rng(models.SEED + 1).standard_normal((8, 4)).astype("float32")
    proxy = forksafe.lazy_model(factory)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        answer = pool.apply_async(call_in_worker, (proxy, x, name == "torch")).get(timeout=120)
    return {
        "answer": answer,
        "reference": models.numpy_forward(x),
        "parent_loaded": forksafe.info(proxy).loaded,
        "parent_state": forksafe.runtime_state(),
    }


def call_in_worker(proxy: Any, x: np.ndarray, as_tensor: bool) -> dict[str, Any]:
    """In a spawn worker: call the proxy that arrived pickled."""
    before = forksafe.info(proxy)
    if as_tensor:
        import torch

        y = as_numpy(proxy(torch.from_numpy(x)))
    else:
        y = as_numpy(proxy(x))
    return {"before": before, "after": forksafe.info(proxy), "y": y, "pid": os.getpid()}


def hosted_torch_tensors() -> dict[str, Any]:
    """A torch model in a host: tensors that need grad go in; numpy comes back."""
    import torch

    from tests.models import SEED, build_torch, numpy_forward

    x = np.random.default_rng(SEED + 1).standard_normal((8, 4)).astype("float32")
    proxy = forksafe.lazy_model(build_torch, isolation="process", timeout=60)
    tensor = torch.from_numpy(x).requires_grad_()
    y = proxy(tensor)
    state = proxy.state_dict()  # an OrderedDict of parameters
    return {
        "y": y,
        "state": {key: type(value).__module__ for key, value in state.items()},
        "reference": numpy_forward(x),
        "backend": forksafe.info(proxy).backend,
        "host_pid": forksafe.info(proxy).host_pid,
        "pid": os.getpid(),
    }


def plain_load_next_to_tensorflow() -> dict[str, Any]:
    """TensorFlow imported, never run: loading a framework-free model must not start it."""
    import tensorflow  # noqa: F401  (imported, as a Keras app's worker module does)

    proxy = forksafe.lazy_model(NumpyModel, 3.0)
    proxy.predict(np.ones(2))
    child = fork_call(lambda: (forksafe.lazy_model(NumpyModel).built_in, os.getpid()), timeout=30)
    return {"state": forksafe.runtime_state().tensorflow, "child": child.get()}
