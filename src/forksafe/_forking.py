"""The one at-fork registration: a weak registry of objects to reset in a fork child.

Like CPython's ``logging`` and redis-py's ``_checkpid``: register once at
import, keep a weak registry, do only trivial work in the child hook, and
check the pid where a fork may have skipped Python's hooks (a C-level
``fork()``, or gevent's ``reinit`` after one).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Protocol

from forksafe import _runtime

__all__ = ["check_pid", "generation", "register"]


class _Resettable(Protocol):
    _self_loading: int | None

    def _self_after_fork(self, keep: list[Any]) -> None: ...


# Bumped in every fork child; proxies report it through ``info``.
generation = 0
_pid = os.getpid()
_registry: dict[int, weakref.ref[Any]] = {}
# What a child inherited and must not destroy: letting the collector run
# framework destructors on objects whose threads did not survive the fork can
# hang or crash. Kept for the life of the process (the pages are shared with
# the parent until written).
_inherited_objects: list[Any] = []
_registry_lock = threading.Lock()


def register(obj: _Resettable) -> None:
    """Reset ``obj`` in every fork child for as long as it is alive."""
    key = id(obj)

    def forget(ref: weakref.ref[Any], key: int = key) -> None:
        if _registry.get(key) is ref:
            del _registry[key]

    with _registry_lock:
        _registry[key] = weakref.ref(obj, forget)


def registered() -> int:
    """How many live objects are registered (for tests and benchmarks)."""
    return len(_registry)


def _live() -> list[Any]:
    return [obj for obj in (ref() for ref in list(_registry.values())) if obj is not None]


def _before() -> None:
    _runtime.before_fork(
        loading=[obj._self_source.describe() for obj in _live() if obj._self_loading is not None]
    )


def _after_in_parent() -> None:
    _runtime.after_fork_in_parent()


def _after_in_child() -> None:
    global generation, _pid, _registry_lock
    _pid = os.getpid()
    generation += 1
    # The lock may have been held by a thread that does not exist here.
    _registry_lock = threading.Lock()
    _runtime.after_fork_in_child()
    for obj in _live():
        obj._self_after_fork(_inherited_objects)


def check_pid() -> None:
    """Backstop for forks that skipped Python's hooks: reset now if the pid changed."""
    if os.getpid() != _pid:
        _after_in_child()


def _on_gevent_hub_import(module: Any) -> None:
    # gevent's ``reinit`` is the documented step after a fork it did not
    # make itself; run the same reset there.
    reinit = getattr(module, "reinit", None)
    if reinit is None or getattr(reinit, "__forksafe_wrapped__", False):
        return

    def forksafe_reinit(*args: Any, **kwargs: Any) -> Any:
        check_pid()
        return reinit(*args, **kwargs)

    forksafe_reinit.__forksafe_wrapped__ = True  # type: ignore[attr-defined]
    forksafe_reinit.__wrapped__ = reinit  # type: ignore[attr-defined]
    module.reinit = forksafe_reinit


def install() -> None:
    """Register the fork hooks once per process (called at import)."""
    import wrapt

    os.register_at_fork(
        before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child
    )
    wrapt.register_post_import_hook(_on_gevent_hub_import, "gevent.hub")
