"""Calls serialized by a lock, for models whose backend cannot take concurrent calls.

Keras on JAX fails when threads call one model at once (``Array has been
deleted``: each call donates the variables' buffers). TensorFlow and torch
answer such calls concurrently, and pay nothing here: the proxy holds a
lock only for a model whose framework says ``concurrent_calls=False`` (see
``_frameworks``), and takes it around ``__call__`` and around every
callable it hands out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from forksafe._frameworks import concurrent_calls

__all__ = ["Serialized", "call_lock"]


def call_lock(model: object) -> threading.RLock | None:
    """A lock for calls of ``model`` if its backend needs one, else ``None``.

    Re-entrant: a model's method may call back into the proxy on the same
    thread (a callback during ``fit`` that calls ``predict``).
    """
    return None if concurrent_calls(model) else threading.RLock()


class Serialized:
    """A model's method that holds the model's call lock while it runs; otherwise looks like it."""

    __slots__ = ("__wrapped__", "_lock")

    def __init__(self, fn: Callable[..., Any], lock: threading.RLock) -> None:
        self.__wrapped__ = fn  # inspect.signature and functools follow it
        self._lock = lock

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"<{self.__wrapped__!r}, calls serialized>"
