"""Loading outside the caller's traces and framework scopes.

A proxy loads where it is first used, and that may be inside a
``tf.function`` trace, a ``tf.data`` map, a Keras training step or a Keras
``Lambda`` layer. A model loaded there would be built in the caller's
function graph (every later call then fails: ``... must be from the same
graph as ...``), or refused by Keras' stateless scope. The frame a model
happens to be first touched from must not decide what it becomes, so such
a load runs on a thread of its own: traces, graphs and Keras scopes are
all per thread, and a new thread has none of them.

Loads from a plain frame (the usual case) run inline, exactly as before.
Nothing here imports a framework: probes look only at modules already in
``sys.modules``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from forksafe._probes import tensorflow_started

__all__ = ["caller_thread", "continued_from", "inside", "process_eager", "run_outside"]

T = TypeVar("T")

# Keras 3 keeps these settings per thread although users set them once for
# the process; a load thread inherits them. Scopes are deliberately not here.
_KERAS_CARRIED = ("dtype_policy", "distribution", "object_name_uids")

_bridge = threading.local()


def process_eager() -> bool:
    """Whether this process runs TensorFlow eagerly (not TF1 graph mode), whatever the frame.

    ``tf.executing_eagerly()`` answers for the current frame: it is False
    inside any trace. A new thread starts in the process's own mode, which
    ``disable_eager_execution()`` records in ``context.default_execution_mode``.
    """
    context = sys.modules.get("tensorflow.python.eager.context")
    mode = getattr(context, "default_execution_mode", None)
    if mode is None:  # an older or newer layout: fall back to the frame's answer
        tf = sys.modules.get("tensorflow")
        return tf is None or bool(tf.executing_eagerly())
    return bool(mode == context.EAGER_MODE)  # type: ignore[union-attr]


def inside() -> str | None:
    """What the calling thread is inside that a load must not see, or ``None``."""
    tf = sys.modules.get("tensorflow")
    # Asking TensorFlow creates its default graph, which starts a runtime
    # thread: never in a process where it has not started (then no trace or
    # graph of the caller can exist either: making one starts it).
    if tf is not None and hasattr(tf, "inside_function") and tensorflow_started():
        if tf.inside_function():
            return "a TensorFlow function trace"
        if bool(tf.executing_eagerly()) != process_eager():
            return "a TensorFlow graph of the caller"
    for module, probe in (
        ("keras.src.backend.common.stateless_scope", "in_stateless_scope"),
        ("keras.src.backend.common.symbolic_scope", "in_symbolic_scope"),
    ):
        check = getattr(sys.modules.get(module), probe, None)
        if check is not None and check():
            return "a Keras scope"
    return None


def _keras_state() -> Any:
    module = sys.modules.get("keras.src.backend.common.global_state")
    return getattr(module, "GLOBAL_STATE_TRACKER", None)


def run_outside(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)`` on a new thread, with none of this thread's traces or scopes.

    Returns its result or raises its exception here. The thread is a daemon:
    if this thread is interrupted while waiting, the load finishes (or not)
    on its own and its result is dropped; the proxy stays unloaded.
    """
    tracker = _keras_state()
    carried = {name: getattr(tracker, name) for name in _KERAS_CARRIED if hasattr(tracker, name)}
    outcome: dict[str, Any] = {}
    origin = threading.get_ident()
    caller = sys._getframe(1)

    def target() -> None:
        _bridge.origin = origin
        _bridge.caller = caller
        _bridge.top = sys._getframe()
        new_tracker = _keras_state()
        for name, value in carried.items():
            setattr(new_tracker, name, value)
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            _bridge.__dict__.clear()

    thread = threading.Thread(target=target, name="forksafe-load", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error
    return outcome["value"]  # type: ignore[no-any-return]


def caller_thread() -> int:
    """The thread a load is for: the caller's, also while it runs on a load thread."""
    origin: int | None = getattr(_bridge, "origin", None)
    return origin if origin is not None else threading.get_ident()


def continued_from(frame: FrameType) -> FrameType | None:
    """The frame above ``frame``; past a load thread's first frame, the caller's frame."""
    if frame is getattr(_bridge, "top", None):
        caller: FrameType | None = getattr(_bridge, "caller", None)
        return caller
    return frame.f_back
