"""gunicorn integration: warm models in each worker right after it is forked.

Plain module-level proxies already work with sync and gthread workers, with
or without ``--preload``. To load before the first request, in
``gunicorn.conf.py``:

    import forksafe.gunicorn
    from myapp import MODEL

    post_fork = forksafe.gunicorn.warm(MODEL)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forksafe._proxy import ModelProxy
from forksafe._warm import warm_in_background

__all__ = ["warm"]


def warm(*proxies: ModelProxy) -> Callable[[Any, Any], None]:
    """A ``post_fork(server, worker)`` hook that starts loading ``proxies`` in the worker.

    The load runs in a background thread, so the worker starts answering
    heartbeats at once (gunicorn kills a worker silent for ``timeout``
    seconds); a request arriving meanwhile waits only for that load.
    """
    for proxy in proxies:
        if not isinstance(proxy, ModelProxy):
            raise TypeError(f"warm takes forksafe proxies, got {type(proxy).__name__}")

    def post_fork(server: Any, worker: Any) -> None:
        warm_in_background(proxies, name="forksafe-gunicorn-warm")

    return post_fork
