"""Loads that must not see the caller's traces: the probes and the load thread."""

from __future__ import annotations

import sys
import threading

import pytest

from forksafe import _runtime, _scopes


def test_run_outside_returns_and_raises_on_another_thread() -> None:
    """The result comes back; so does an exception, with its type and message."""
    here = threading.get_ident()
    assert _scopes.run_outside(threading.get_ident) != here
    with pytest.raises(ZeroDivisionError):
        _scopes.run_outside(lambda: 1 / 0)


def test_load_thread_knows_its_caller() -> None:
    """caller_thread() names the waiting caller; the caller's frames continue the stack."""
    here = threading.get_ident()
    line = sys._getframe().f_lineno + 1
    seen = _scopes.run_outside(lambda: (_scopes.caller_thread(), _runtime.caller_location()))
    assert seen[0] == here
    assert seen[1] == f"{__file__}:{line}"
    assert _scopes.caller_thread() == here


def test_probes_see_a_trace_and_a_keras_scope() -> None:
    """Inside tf.function and inside a Keras StatelessScope a load goes elsewhere."""
    import keras
    import tensorflow as tf

    assert _scopes.inside() is None
    assert _scopes.process_eager()
    seen: list[str | None] = []
    tf.function(lambda: seen.append(_scopes.inside()) or tf.constant(0))()
    with tf.Graph().as_default():
        seen.append(_scopes.inside())
    with keras.StatelessScope():
        seen.append(_scopes.inside())
    assert seen == [
        "a TensorFlow function trace",
        "a TensorFlow graph of the caller",
        "a Keras scope",
    ]


def test_keras_settings_follow_the_load_thread() -> None:
    """Keras 3 keeps the dtype policy per thread; a load thread gets the caller's."""
    import keras

    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        assert _scopes.run_outside(lambda: keras.config.dtype_policy().name) == "mixed_float16"
    finally:
        keras.config.set_dtype_policy(before)
