"""Run every usage of a flavor on a bare model and on proxies of the same file, in one process.

    python -m tests.transparency.runner FLAVOR MODELS_DIR OUT

Flavors: ``keras3`` (Keras 3 on TensorFlow), ``tf_keras`` (eager) and ``tf1``
(tf_keras in TF1 graph mode: ``disable_eager_execution`` is process-wide, so
each flavor has its interpreter; ``TF_USE_LEGACY_KERAS=1`` is set by the
caller for the tf_keras flavors). Each usage gets a freshly loaded bare model
and a fresh proxy (the default isolation: in effect ``"inprocess"`` in this
untouched process); usages marked ``host`` also run
through a private host (``"process"``) and a shared one (``"shared"``: one
host per flavor, and one of its own for a usage that changes the model,
stopped after). After each usage the model predicts once more (``after``): a
usage that raised must leave the model as usable as the bare one. Outcomes
are written to OUT as plain data (pickle).
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from forksafe._frameworks import framework_of_value, to_numpy

FLAVORS = ("keras3", "tf_keras", "tf1")
HOSTED = ("host", "shared")  # the kinds through a model host: isolation "process", "shared"
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
# A framework quoting ``type(obj)`` names ModelProxy for a proxy: the documented
# difference "type(proxy) is ModelProxy", not one of the message.
_CLASS = re.compile(r"<class '[\w.]+'>")
# TensorFlow's "in user code:" lists the frames of the call, a proxy's among them.
_FRAME = re.compile(r'\n[ \t]*File "[^"\n]+", line \d+, in [^\n]*(\n[ \t]+[^\n]*)?')
_BLANKS = re.compile(r"\n\s*\n+")


@dataclass
class Context:
    """What a usage gets besides the model."""

    flavor: str
    keras: Any
    tf: Any
    path: str
    x: np.ndarray
    y: np.ndarray
    tmp: str
    kind: str  # "bare", "proxy", "host" or "shared"

    def file(self, name: str) -> str:
        """A fresh path in this usage's own temporary directory."""
        return os.path.join(self.tmp, f"{self.kind}-{name}")


def normalize(value: Any, depth: int = 0) -> Any:
    """Plain, comparable data for a usage's result (tensors as arrays, objects as type names)."""
    tf = sys.modules.get("tensorflow")
    if isinstance(value, np.ndarray | np.generic):
        return ("array", np.asarray(value, dtype=float) if value.dtype.kind in "fiub" else value)
    if tf is not None and isinstance(value, tf.Tensor):
        if hasattr(value, "numpy"):
            return ("tensor", np.asarray(value.numpy(), dtype=float))
        return ("symbolic", str(value.shape))
    if framework_of_value(value) in ("jax", "torch") and hasattr(value, "__array__"):
        return ("tensor", np.asarray(to_numpy(value), dtype=float))  # Keras on JAX or torch
    if depth < 4 and isinstance(value, list | tuple):
        return (type(value).__name__, [normalize(v, depth + 1) for v in value])
    if depth < 4 and isinstance(value, dict):
        return ("dict", {str(k): normalize(v, depth + 1) for k, v in sorted(value.items())})
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    return ("object", type(value).__name__, _state(value, depth))


def _state(value: Any, depth: int) -> Any:
    """What an object holds, compared by value: a variable's value, a config, a history."""
    if depth >= 4:
        return None
    try:
        if hasattr(value, "numpy") and hasattr(value, "shape"):  # a variable
            return normalize(np.asarray(value.numpy()), depth + 1)
        if isinstance(getattr(value, "history", None), dict):  # keras' History
            return normalize(value.history, depth + 1)
        if callable(getattr(value, "get_config", None)):  # layers, optimizers, models
            return normalize(value.get_config(), depth + 1)
    except Exception as exc:  # an object that cannot say: say why, compared too
        return ("unavailable", type(exc).__name__)
    return None


def message(exc: BaseException, ctx: Context | None) -> str:
    """The exception's message, comparable across kinds: no addresses, no temporary paths."""
    text = _BLANKS.sub("\n", _FRAME.sub("", _CLASS.sub("<class>", _ADDRESS.sub("0x?", str(exc)))))
    if ctx is not None:
        text = text.replace(os.path.join(ctx.tmp, f"{ctx.kind}-"), "<tmp>/")
        text = text.replace(ctx.tmp, "<tmp>")
    return text[:300]


def outcome(fn: Any, *args: Any, ctx: Context | None = None) -> tuple[Any, ...]:
    """("ok", normalized result) or ("raised", exception type name, message, traceback)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ("ok", normalize(fn(*args)))
    except BaseException as exc:  # a usage's failure is its outcome
        if isinstance(exc, KeyboardInterrupt):
            raise
        return ("raised", type(exc).__name__, message(exc, ctx), traceback.format_exc()[-1500:])


def _predict_after(m: Any, ctx: Context) -> Any:
    return m.predict_on_batch(ctx.x)


def _host_of(model: Any) -> int:
    import forksafe

    return forksafe.info(model).host_pid or 0


def _stop_host(pid: int) -> None:
    """Stop a shared host (SIGTERM, as a user would), bounded; 0: none was started."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # gone already (a usage's own fault replaced it)
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def setup(flavor: str) -> tuple[Any, Any, str]:
    """Import the flavor's Keras (and switch TF1 graph mode on); return (keras, tf, file name)."""
    import tensorflow as tf

    if flavor == "keras3":
        import keras

        return keras, tf, "tiny.keras"
    import tf_keras

    if flavor == "tf1":
        tf.compat.v1.disable_eager_execution()
    return tf_keras, tf, "tiny_tf_keras.h5"


def _model(kind: str, path: str, tmp: str, common: str, changes: bool) -> Any:
    """A fresh model of ``kind``; through a shared host, the flavor's one (at ``common``).

    A usage that changes the model gets a shared host of its own (a copy of
    the file in its ``tmp``), so no usage sees another's changes.
    """
    import forksafe

    if kind == "proxy":  # the default isolation: in effect inprocess here, a host in a child
        return forksafe.load_model(path, compile=False)
    if kind == "host":
        return forksafe.load_model(path, compile=False, isolation="process", timeout=120)
    if changes:
        common = shutil.copy(path, os.path.join(tmp, os.path.basename(common)))
    return forksafe.load_model(common, compile=False, isolation="shared", timeout=120)


def run(flavor: str, models_dir: str) -> dict[str, dict[str, Any]]:
    """Every usage of ``flavor``: {name: {"bare": outcome, "proxy": ..., "host": ...}}."""
    from tests.transparency.usages import USAGES

    keras, tf, name = setup(flavor)
    path = os.path.join(models_dir, name)
    data = np.load(os.path.join(models_dir, "reference.npz"))
    results: dict[str, dict[str, Any]] = {}
    hosts: set[int] = set()  # the flavor's shared host, stopped at the end
    with tempfile.TemporaryDirectory() as flavor_dir:
        common = shutil.copy(path, os.path.join(flavor_dir, f"shared-{name}"))
        try:
            for usage in USAGES:
                if flavor not in usage.flavors:
                    continue
                row = {}
                kinds = ["bare", "proxy"] + (list(HOSTED) if usage.host and flavor != "tf1" else [])
                for kind in kinds:
                    with tempfile.TemporaryDirectory() as tmp:
                        ctx = Context(flavor, keras, tf, path, data["x"], data["y"], tmp, kind)
                        if kind == "bare":
                            model = keras.models.load_model(path, compile=False)
                        else:
                            model = _model(kind, path, tmp, common, usage.changes)
                        try:
                            row[kind] = outcome(usage.fn, model, ctx, ctx=ctx)
                            row[f"{kind}_after"] = outcome(_predict_after, model, ctx, ctx=ctx)
                        finally:
                            if kind == "shared" and usage.changes:
                                _stop_host(_host_of(model))
                            elif kind == "shared":
                                hosts.add(_host_of(model))
                        del model
                results[usage.name] = row
        finally:
            for pid in hosts:
                _stop_host(pid)
    return results


def main() -> int:
    """Entry point: run a flavor, write its outcomes."""
    flavor, models_dir, out = sys.argv[1:4]
    results = run(flavor, models_dir)
    with open(out, "wb") as f:
        pickle.dump(results, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
