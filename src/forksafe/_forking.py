"""The one at-fork registration: callbacks and a weak registry of objects reset in a fork child.

Like CPython's ``logging`` and redis-py's ``_checkpid``: register once at
import, keep a weak registry, do only trivial work in the child hook, and
check the pid where a fork may have skipped Python's hooks (a C-level
``fork()``, or gevent's ``reinit`` after one). Modules that keep
per-process state register callbacks here instead of stamping pids of their
own. A failing callback never stops the others: its error is kept and
reported (as a ``ForkSafeWarning``) from the next ordinary call, since a
child hook must not write anywhere (an output lock may have crossed the
fork held).
"""

from __future__ import annotations

import os
import secrets
import threading
import traceback
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from forksafe._errors import warn

__all__ = [
    "at_fork",
    "check_pid",
    "generation",
    "loading",
    "register",
    "report_failures",
    "tree",
]

Callback = Callable[[], None]


class _Resettable(Protocol):
    _self_loading: int | None

    def _self_after_fork(self, keep: list[Any]) -> None: ...

    def _self_describe(self) -> str: ...


# Bumped in every fork child; proxies and their methods compare it.
generation = 0
_pid = os.getpid()
# The process tree's identity: the first process that imported forksafe and
# a secret that only it and its fork descendants hold (never renewed at a
# fork). Fork siblings use it to find and authenticate one shared host template.
tree: tuple[int, bytes] = (os.getpid(), secrets.token_bytes(32))
_registry: dict[int, weakref.ref[Any]] = {}
_callbacks: dict[str, list[tuple[str, Callback]]] = {
    "before": [],
    "after_in_parent": [],
    "after_in_child": [],
}
# What a child inherited and must not destroy: letting the collector run
# framework destructors on objects whose threads did not survive the fork can
# hang or crash. Kept for the life of the process (the pages are shared with
# the parent until written).
_inherited_objects: list[Any] = []
_failures: list[str] = []
_registry_lock = threading.Lock()


def at_fork(
    name: str,
    *,
    before: Callback | None = None,
    after_in_parent: Callback | None = None,
    after_in_child: Callback | None = None,
) -> None:
    """Run these callbacks around every fork of this process, in registration order."""
    for when, callback in (
        ("before", before),
        ("after_in_parent", after_in_parent),
        ("after_in_child", after_in_child),
    ):
        if callback is not None:
            _callbacks[when].append((name, callback))


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


def loading() -> list[str]:
    """What registered objects are loading in some thread right now."""
    return [obj._self_describe() for obj in _live() if obj._self_loading is not None]


def _run(when: str) -> None:
    for name, callback in _callbacks[when]:
        try:
            callback()
        except Exception:  # isolated: the other callbacks still run
            _failures.append(f"{name} ({when}):\n{traceback.format_exc()}")


def _before() -> None:
    _run("before")


def _after_in_parent() -> None:
    _run("after_in_parent")


def _after_in_child() -> None:
    global generation, _pid, _registry_lock
    _pid = os.getpid()
    generation += 1
    # The lock may have been held by a thread that does not exist here.
    _registry_lock = threading.Lock()
    _run("after_in_child")
    for obj in _live():
        try:
            obj._self_after_fork(_inherited_objects)
        except Exception:
            _failures.append(f"resetting {obj!r} (after_in_child):\n{traceback.format_exc()}")


def check_pid() -> None:
    """Backstop for forks that skipped Python's hooks: reset now if the pid changed."""
    if os.getpid() != _pid:
        _after_in_child()


def report_failures() -> None:
    """Warn about at-fork callbacks that failed since the last report (outside any hook)."""
    while _failures:
        warn(f"a forksafe at-fork callback failed; the others ran: {_failures.pop(0)}")


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
