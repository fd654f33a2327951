"""Load proxies in a background thread, so a worker's start-up hook returns at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from forksafe._proxy import ModelProxy

__all__ = ["warm_in_background"]

logger = logging.getLogger("forksafe")


def _warm(proxies: list[ModelProxy]) -> None:
    for proxy in proxies:
        try:
            proxy._self_resolve()
        except Exception:
            # The first real use loads again and raises to its caller.
            logger.exception("forksafe: warming %r failed", proxy)


def warm_in_background(proxies: Iterable[ModelProxy], *, name: str) -> threading.Thread:
    """Start loading ``proxies`` in this process; a use meanwhile waits for that load."""
    chosen = list(proxies)
    for proxy in chosen:
        if not isinstance(proxy, ModelProxy):
            raise TypeError(f"warm takes forksafe proxies, got {type(proxy).__name__}")
    thread = threading.Thread(target=_warm, args=(chosen,), name=name, daemon=True)
    thread.start()
    return thread
