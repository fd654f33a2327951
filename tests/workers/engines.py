"""What the engine drivers (Dask, Ray, Spark) and their tests share.

Every load of the model, in whichever process, appends that process's pid to
a log (``counted_load``), so a test counts loads per process from outside:
each worker loads once, the driver and the scheduler never. A driver is a
fresh interpreter (``python -m tests.workers.<engine>_driver``) that prints
one JSON line: the answers its workers gave, and what the driver itself
holds at the end.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

import forksafe
from tests.support.procs import stop_group
from tests.support.workers import ROOT

DRIVER_TIMEOUT = 240.0


def counted_load(path: str, *, log: str) -> Any:
    """Load the Keras model at ``path``, first appending this process's pid to ``log``."""
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    import keras

    return keras.models.load_model(path, compile=False)


def counted_model(path: str, log: str, isolation: str = "auto") -> forksafe.ModelProxy:
    """The proxy every driver ships: the tiny model, loads logged."""
    return forksafe.load_model(path, loader=counted_load, log=log, isolation=isolation)


def answer(model: Any, x: Any) -> dict[str, Any]:
    """Predict in a worker; say which process answered and how it holds the model."""
    y = np.asarray(model.predict_on_batch(np.asarray(x, dtype="float32")))
    info = forksafe.info(model)
    return {"pid": os.getpid(), "y": y.tolist(), "loads": info.loads, "in_effect": info.in_effect}


def driver_facts(*proxies: forksafe.ModelProxy) -> dict[str, Any]:
    """What the driver holds: whether any proxy loaded, and which frameworks it imported."""
    return {
        "pid": os.getpid(),
        "loaded": any(forksafe.info(p).loaded for p in proxies),
        "frameworks": sorted(
            m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules
        ),
    }


def emit(result: dict[str, Any]) -> None:
    """Print the driver's result as its last line of output."""
    print("RESULT " + json.dumps(result), flush=True)


def run_driver(module: str, args: list[str], env: dict[str, str], log: str) -> dict[str, Any]:
    """Run ``python -m tests.workers.<module>`` (own session, bounded); return its result."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"tests.workers.{module}", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = process.wait(DRIVER_TIMEOUT)
        except subprocess.TimeoutExpired:
            stop_group(process, grace=2.0)
            code = -9
    with open(log, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
    assert code == 0 and lines, f"{module} exited {code}:\n{text[-6000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def loads_by_pid(log: str) -> collections.Counter[int]:
    """How many times each process loaded the model."""
    try:
        with open(log, encoding="utf-8") as f:
            return collections.Counter(int(line) for line in f if line.strip())
    except FileNotFoundError:
        return collections.Counter()


def check_answers(answers: list[dict[str, Any]], reference: np.ndarray) -> set[int]:
    """Every answer equals the reference and came from a process that loaded once."""
    assert answers
    for a in answers:
        np.testing.assert_allclose(np.asarray(a["y"]), reference, atol=1e-5)
        assert a["loads"] == 1, a
    return {a["pid"] for a in answers}


def check_run(
    result: dict[str, Any], load_log: str, reference: np.ndarray, in_effect: str = "inprocess"
) -> tuple[set[int], collections.Counter[int]]:
    """A driver's run: right answers, each process loaded once, the driver never.

    Returns the pids that answered and the loads by pid.
    """
    answered: set[int] = set()
    for usage, answers in result["results"].items():
        answered |= check_answers(answers, reference)
        assert {a["in_effect"] for a in answers} == {in_effect}, usage
    loads = loads_by_pid(load_log)
    assert result["driver"]["pid"] not in loads, "the driver loaded the model"
    assert not result["driver"]["loaded"] and result["driver"]["frameworks"] == []
    assert set(loads.values()) == {1}, loads  # each process loaded once
    return answered, loads


def imports_tensorflow(pid: int) -> bool:
    """Whether process ``pid`` has TensorFlow's native library mapped (it imported TF)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return "_pywrap_tensorflow" in f.read()
    except OSError:
        return False
