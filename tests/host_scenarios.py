"""Host scenarios that run in a clean process or a fresh tree (see ``children.run_clean``)."""

from __future__ import annotations

import os
import signal
from typing import Any

import numpy as np

import forksafe
from tests.models import Models
from tests.scenarios import start_runtime
from tests.support.children import fork_call, fork_many
from tests.support.fakes import Recorder
from tests.support.procs import parent_of, wait_gone

_TORCH_WEIGHT = np.linspace(-1.0, 1.0, 12, dtype="float32").reshape(3, 4)
_TORCH_BIAS = np.array([0.5, -0.5, 0.25], dtype="float32")


def torch_linear() -> Any:
    """A torch ``nn.Linear`` with fixed weights, whose outputs require grad."""
    import torch

    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(_TORCH_WEIGHT))
        layer.bias.copy_(torch.from_numpy(_TORCH_BIAS))
    return layer


def torch_linear_reference(x: np.ndarray) -> np.ndarray:
    """``torch_linear``'s output computed with numpy."""
    return x @ _TORCH_WEIGHT.T + _TORCH_BIAS


def bound_methods_in_poisoned_child(models: Models) -> dict[str, Any]:
    """Methods taken from proxies loaded in this (now poisoned) process, called in a child."""
    x, _ = models.reference()
    inprocess = forksafe.load_model(models.keras, isolation="inprocess")
    auto = forksafe.load_model(models.keras)
    predict_inprocess = inprocess.predict
    predict_auto = auto.predict
    reference = predict_auto(x, verbose=0)  # loads both here
    start_runtime()  # a large op: torch's pool starts only for one

    def child() -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            out["inprocess"] = predict_inprocess(x, verbose=0)
        except forksafe.InheritedRuntimeError as exc:
            out["inprocess"] = exc
        out["auto"] = predict_auto(x, verbose=0)
        out["auto_in_effect"] = forksafe.info(auto).in_effect
        return out

    return {"reference": reference, **fork_call(child, timeout=60).get()}


def pool_of_poisoned_workers(models: Models, workers: int, parent_hosts: bool) -> dict[str, Any]:
    """A poisoned pool parent whose workers all start hosts at once: how many templates serve."""
    import warnings

    x, _ = models.reference()
    start_runtime()
    proxy = forksafe.load_model(models.keras)  # auto: hosted in every worker
    parent_template = None
    if parent_hosts:
        own = forksafe.load_model(models.keras, isolation="process")
        own.predict_on_batch(x)
        parent_template = parent_of(forksafe.info(own).host_pid or 0)

    def worker(index: int) -> dict[str, Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", forksafe.ForkSafeWarning)
            y = proxy.predict_on_batch(x)
        host = forksafe.info(proxy).host_pid
        return {"y": y, "host": host, "template": parent_of(host or 0), "pid": os.getpid()}

    outcomes = fork_many(worker, workers, timeout=120)
    return {
        "workers": [o.get() for o in outcomes],
        "parent_template": parent_template,
        "parent_pid": os.getpid(),
    }


def shared_client(tag: str, rows: int, calls: int, seed: int) -> dict[str, Any]:
    """In a process of its own: a shared proxy's answers, checked row for row."""
    import sys

    proxy = forksafe.lazy_model(Recorder, tag, isolation="shared", timeout=60)
    rng = np.random.default_rng(seed)
    wrong = 0
    for _ in range(calls):
        x = rng.standard_normal((int(rng.integers(1, rows + 1)), 3))
        wrong += not np.array_equal(proxy.predict(x), x * 2.0 + 1.0)
    return {
        "wrong": wrong,
        "host": forksafe.info(proxy).host_pid,
        "pid": os.getpid(),
        "frameworks": sorted(m for m in ("tensorflow", "keras") if m in sys.modules),
    }


def keras_through_a_shared_host(models: Models) -> dict[str, Any]:
    """In a fresh interpreter: predict through a shared host; which frameworks got imported."""
    import sys

    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="shared", timeout=120)
    y = proxy.predict_on_batch(x)
    return {
        "y": y,
        "in_effect": forksafe.info(proxy).in_effect,
        "frameworks": sorted(m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules),
    }


def stop_shared(proxy: forksafe.ModelProxy) -> None:
    """Stop a shared proxy's host with SIGTERM, as a user would: it leaves no socket or lock."""
    info = forksafe.info(proxy)
    if info.host_pid is None:
        proxy.pid()  # a Recorder's: connect, starting the host if need be
        info = forksafe.info(proxy)
    assert info.host_pid is not None and info.host_log is not None
    os.kill(info.host_pid, signal.SIGTERM)
    assert wait_gone(info.host_pid)
    base = info.host_log.removesuffix(".log")
    assert not os.path.exists(f"{base}.sock")
    assert not os.path.exists(f"{base}.lock")
