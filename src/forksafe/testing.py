"""Test helpers for fork safety, usable with or without pytest.

The pytest plugin (``pytest_forksafe``, loaded automatically) wraps
these as fixtures with a configurable default timeout.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Any

from forksafe._childrun import ChildCrashedError, ForkTimeoutError, run_in_fork, run_in_subprocess
from forksafe._frameworks import display
from forksafe._host.shm import PREFIX
from forksafe._tiny import TinyModel, build_tiny_model, save_tiny_model

__all__ = [
    "ChildCrashedError",
    "ForkTimeoutError",
    "TinyModel",
    "assert_fork_safe",
    "build_tiny_model",
    "host_processes",
    "import_report",
    "process_tree",
    "run_in_fork",
    "run_in_subprocess",
    "save_tiny_model",
    "segment_creator",
    "shm_segments",
]

_IMPORT_ALLOWANCE = 120.0  # seconds for a fresh interpreter to import the module
_TEMPLATE_MARK = b"forksafe._host.host_template import main"


def import_report(module: str) -> dict[str, Any]:
    """Import ``module`` here and report which framework runtimes that started, and where.

    Meant for a fresh interpreter (see
    [`assert_fork_safe`][forksafe.testing.assert_fork_safe]): forksafe is
    imported first, so the line that starts TensorFlow is recorded. Returns
    ``{"module": module, "started": [(backend, "file:line" or None), ...]}``.
    """
    import forksafe

    importlib.import_module(module)
    started = [(b.name, b.started_at) for b in forksafe.runtime_state().backends if b.started]
    return {"module": module, "started": started}


def _resolve(target: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(target):
        return target
    module, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"target must be 'module:function' or a callable, got {target!r}")
    value: Any = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value  # type: ignore[no-any-return]


def _check(target: str | Callable[..., Any], module: str, timeout: float) -> dict[str, Any]:
    """In a fresh interpreter: import, check the runtime, fork, call ``target`` there."""
    report = import_report(module)
    if report["started"]:
        return {"problem": "started", **report}
    fn = _resolve(target)
    try:
        run_in_fork(fn, timeout=timeout)
    except ForkTimeoutError as exc:
        return {"problem": "hang", "stacks": exc.stacks}
    except ChildCrashedError as exc:
        return {"problem": "crash", "detail": str(exc)}
    except BaseException as exc:
        return {
            "problem": "raised",
            "detail": f"{type(exc).__name__}: {exc}",
            "traceback": str(exc.__cause__ or ""),
        }
    return {"problem": None}


def assert_fork_safe(
    target: str | Callable[..., Any], *, import_first: str | None = None, timeout: float = 30.0
) -> None:
    """Fail unless ``target`` runs in a forked child of a process that imported its module.

    In a fresh interpreter: import forksafe, then ``import_first`` (default:
    the target's module), and check that the import started no framework
    runtime; then fork and call ``target`` (``"module:function"`` or a
    picklable callable) in the child, bounded by ``timeout``.

    Raises:
        AssertionError: importing started a runtime (naming the file:line),
            or the child hung (with its stacks), crashed, or raised.
    """
    __tracebackhide__ = True
    if isinstance(target, str):
        name = target
        module = import_first or target.partition(":")[0]
    else:
        name = getattr(target, "__qualname__", repr(target))
        module = import_first or target.__module__
    result = run_in_subprocess(_check, target, module, timeout, timeout=timeout + _IMPORT_ALLOWANCE)
    problem = result["problem"]
    if problem is None:
        return
    if problem == "started":
        where = "; ".join(
            f"{display(n)} at {at or 'an unknown line'}" for n, at in result["started"]
        )
        raise AssertionError(
            f"importing {module!r} started a framework runtime ({where}). Every process forked "
            "from one that imports it (Celery prefork, gunicorn --preload, multiprocessing "
            "'fork') would hang on its first prediction. Load models lazily with "
            "forksafe.load_model(...) and run nothing at import time."
        )
    if problem == "hang":
        raise AssertionError(
            f"{name} did not finish within {timeout} s in a forked child of a process that "
            f"imported {module!r}; it was killed. Its Python stacks:\n{result['stacks']}"
        )
    if problem == "crash":
        raise AssertionError(f"{name} crashed a forked child: {result['detail']}")
    raise AssertionError(
        f"{name} raised in a forked child: {result['detail']}\n{result['traceback']}"
    )


def shm_segments() -> set[str]:
    """Names of forksafe's shared-memory segments that exist now."""
    try:
        return {name for name in os.listdir("/dev/shm") if name.startswith(PREFIX)}
    except OSError:
        return set()


def host_processes() -> set[int]:
    """Pids of live forksafe model hosts on this machine (forks of a template)."""
    marked = _forksafe_processes()
    return {pid for pid, parent in marked.items() if parent in marked}


def _forksafe_processes() -> dict[int, int]:
    """Live processes started as a forksafe template (templates and their hosts): pid -> parent."""
    marked: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if _TEMPLATE_MARK not in f.read():
                    continue
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            marked[int(entry)] = int(fields[1])
    return marked


def segment_creator(name: str) -> int | None:
    """The pid in a segment's name (``forksafe_<creator pid>_...``), or ``None`` if none."""
    pid, underscore, _ = name.removeprefix(PREFIX).partition("_")
    return int(pid) if underscore and pid.isdigit() else None


def process_tree(roots: set[int]) -> set[int]:
    """``roots`` and every live descendant of one of them (one pass over ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found = set(roots)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; return the last answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
