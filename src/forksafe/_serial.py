"""Calls serialized by a lock, for models whose backend cannot take concurrent calls.

Keras on JAX fails when threads call one model at once (``Array has been
deleted``: each call donates the variables' buffers). TensorFlow and torch
answer such calls concurrently, and pay nothing here: the proxy holds a
lock only for a model whose framework says ``concurrent_calls=False`` (see
``_frameworks``), and takes it around ``__call__`` and around every
callable it hands out (``_methods.ProxyMethod``).
"""

from __future__ import annotations

import threading

from forksafe._frameworks import concurrent_calls

__all__ = ["call_lock"]


def call_lock(model: object) -> threading.RLock | None:
    """A lock for calls of ``model`` if its backend needs one, else ``None``.

    Re-entrant: a model's method may call back into the proxy on the same
    thread (a callback during ``fit`` that calls ``predict``).
    """
    return None if concurrent_calls(model) else threading.RLock()
