"""Celery integration: warm models in every pool process, after Celery's init hook.

Plain module-level proxies already work with every pool (``prefork``,
``threads``, ``solo``, ``gevent``); ``install`` only moves the load ahead of
the first task:

    app = Celery(...)
    MODEL = forksafe.load_model("model.keras")
    forksafe.celery.install(app, warm=[MODEL])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from forksafe._proxy import ModelProxy
from forksafe._warm import warm_in_background

__all__ = ["install"]

_PREFORK = "celery.concurrency.prefork"


def install(app: Any, warm: Iterable[ModelProxy] = ()) -> None:
    """Warm ``warm`` in each Celery pool process of ``app``'s workers.

    With ``prefork`` the load starts in each child once ``worker_process_init``
    has returned (Celery kills a child whose init blocks for 4 s), in a
    background thread: a task arriving meanwhile waits only for that load.
    Never in the parent, which would then hand a started runtime to every
    child. With ``threads``, ``solo`` and ``gevent`` there is one process,
    warmed once the worker is ready; its threads share that one load.
    """
    from celery import signals

    proxies = list(warm)
    for proxy in proxies:
        if not isinstance(proxy, ModelProxy):
            raise TypeError(f"warm takes forksafe proxies, got {type(proxy).__name__}")

    def in_pool_process(**_: Any) -> None:
        warm_in_background(proxies, name="forksafe-celery-warm")

    def in_single_process(sender: Any = None, **_: Any) -> None:
        pool = getattr(getattr(sender, "controller", None), "pool_cls", None)
        if getattr(pool, "__module__", "") != _PREFORK:
            warm_in_background(proxies, name="forksafe-celery-warm")

    # Celery keeps weak references to receivers by default; these closures
    # must live as long as the app.
    signals.worker_process_init.connect(in_pool_process, weak=False)
    signals.worker_ready.connect(in_single_process, weak=False)
    app.__dict__.setdefault("_forksafe_receivers", []).extend([in_pool_process, in_single_process])
