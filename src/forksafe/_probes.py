"""Per framework: is its runtime started in this process, and hooks that see where it starts.

Each framework has one probe (``*_started``: never imports the framework,
never starts it) and, where the framework has a Python-level door to its
start, capture hooks that run once after the framework's module is imported
and wrap that door for its first call. ``_frameworks.FRAMEWORKS`` names
them; ``_runtime`` calls them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "Note",
    "jax_hooks",
    "jax_orphaned",
    "jax_started",
    "never",
    "openmp_pool_threads",
    "tensorflow_hooks",
    "tensorflow_orphaned",
    "tensorflow_started",
    "torch_hooks",
    "torch_started",
]

# ``note(backend, frame)``: record that ``backend`` starts now, called from ``frame``.
Note = Callable[[str, Any], None]
Hook = tuple[str, Callable[[Any, Note], None]]


# -- native threads -----------------------------------------------------------


def _tasks() -> list[str]:
    try:
        return os.listdir("/proc/self/task")
    except OSError:
        return []


def _comm(tid: str) -> str | None:
    try:
        with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _threads_named(prefix: str) -> bool:
    """Whether a native thread of this process has a name starting with ``prefix``.

    TF1 sessions start ``tf_*`` pools without setting the eager context
    handle; their native threads are invisible to ``threading``.
    """
    return any((_comm(tid) or "").startswith(prefix) for tid in _tasks())


def never() -> bool:
    """For a framework whose inherited state this process cannot see."""
    return False


_omp_ranges: list[tuple[int, int]] | None = None


def _openmp_ranges() -> list[tuple[int, int]]:
    """Executable mappings of an OpenMP runtime (torch's bundled libgomp, or libomp).

    Kept once found (reading the maps of a process with torch costs ~0.7 ms):
    torch's libraries load its OpenMP runtime at import and never unload it,
    and a fork child has the same mappings.
    """
    global _omp_ranges
    if _omp_ranges:
        return _omp_ranges
    _omp_ranges = _read_openmp_ranges()
    return _omp_ranges


def _read_openmp_ranges() -> list[tuple[int, int]]:
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                if "omp" not in line:
                    continue
                parts = line.split()
                name = os.path.basename(parts[-1]) if len(parts) >= 6 else ""
                if "x" in parts[1] and name.startswith(("libgomp", "libomp", "libiomp")):
                    low, high = (int(v, 16) for v in parts[0].split("-"))
                    ranges.append((low, high))
    except (OSError, ValueError, IndexError):
        return []
    return ranges


def _program_counter(tid: str) -> int | None:
    """Where thread ``tid`` waits in a system call (its program counter).

    ``-1`` while it runs, ``-2`` once it has exited, ``None`` where /proc
    does not tell.
    """
    try:
        with open(f"/proc/self/task/{tid}/syscall", encoding="ascii") as f:
            fields = f.read().split()
    except (FileNotFoundError, ProcessLookupError):
        return -2
    except OSError:
        return None
    if not fields:
        return None
    if fields[0] == "running":
        return -1
    try:
        return int(fields[-1], 16)
    except ValueError:
        return None


# Threads that existed when torch was imported: a spinning thread (no program
# counter to read) counts as an OpenMP worker only if it is newer than these.
_torch_baseline: set[str] | None = None
# OpenMP workers spin for well under a millisecond after a region, once they get a
# core: on a loaded machine that can take tens of milliseconds.
_SPIN_RETRIES = 100


def openmp_pool_threads() -> int:
    """How many native threads of this process are an OpenMP runtime's pool workers.

    A worker parked between parallel regions sleeps in ``futex`` called from
    the OpenMP runtime's own code (libgomp issues the system call inline on
    x86-64), so its program counter lies in the runtime's mapping: threads
    of other native libraries (XLA's, OpenBLAS's, TensorFlow's) sleep
    elsewhere, and Python's own threads are never counted. A worker still
    spinning after a region is waited for, briefly; one that keeps running,
    or whose system call cannot be read, counts if it appeared after torch's
    import.
    """
    python = {t.native_id for t in threading.enumerate()}
    python.add(os.getpid())
    candidates = [tid for tid in _tasks() if int(tid) not in python]
    if not candidates:
        return 0
    ranges = _openmp_ranges()
    if not ranges:
        return 0
    found = 0
    for tid in candidates:
        pc = _program_counter(tid)
        for _ in range(_SPIN_RETRIES):
            if pc != -1:
                break
            time.sleep(0.001)
            pc = _program_counter(tid)
        if pc == -2:
            continue
        if pc is None or pc == -1:
            # Still running, or /proc does not say where it waits: count it if
            # it is newer than torch (the safe side: a host, not a hang).
            found += _torch_baseline is not None and tid not in _torch_baseline
        elif any(low <= pc < high for low, high in ranges):
            found += 1
    return found


# -- TensorFlow ---------------------------------------------------------------


def _tf_context_handle() -> bool:
    ctx_module = sys.modules.get("tensorflow.python.eager.context")
    ctx = getattr(ctx_module, "_context", None)
    return ctx is not None and getattr(ctx, "_context_handle", None) is not None


def tensorflow_started() -> bool:
    """TF's eager context exists, or a TF1 session's ``tf_*`` threads run."""
    if "tensorflow" not in sys.modules:
        return False
    return _tf_context_handle() or _threads_named("tf_")


def tensorflow_orphaned() -> bool:
    """TF's eager context exists but none of its ``tf_*`` threads: a fork child's state.

    What a process inherits from a parent that ran TensorFlow before forking,
    with forksafe imported only after the fork (measured: the parent has
    ``tf_Compute`` and ``tf_graph_runner`` threads from its first op on).
    """
    return "tensorflow" in sys.modules and _tf_context_handle() and not _threads_named("tf_")


def _capture_first_call(owner: Any, attr: str, backend: str, note: Note) -> None:
    """Wrap ``owner.attr`` (a method or a module's function) to record its first caller.

    The wrapper restores the original before calling it, so the framework's
    own hot path is untouched afterwards.
    """
    original = owner.__dict__.get(attr)
    if original is None or getattr(original, "__forksafe_capture__", False):
        return

    def first_call(*args: Any, **kwargs: Any) -> Any:
        setattr(owner, attr, original)
        note(backend, sys._getframe(1))
        return original(*args, **kwargs)

    first_call.__forksafe_capture__ = True  # type: ignore[attr-defined]
    first_call.__wrapped__ = original  # type: ignore[attr-defined]
    first_call.__name__ = getattr(original, "__name__", attr)
    setattr(owner, attr, first_call)


def _on_tf_context_import(module: Any, note: Note) -> None:
    context = getattr(module, "Context", None)
    ctx = getattr(module, "_context", None)
    if context is not None and getattr(ctx, "_context_handle", None) is None:
        _capture_first_call(context, "ensure_initialized", "tensorflow", note)


def _on_tf_session_import(module: Any, note: Note) -> None:
    session = getattr(module, "BaseSession", None)
    if session is not None and not _threads_named("tf_"):
        _capture_first_call(session, "__init__", "tensorflow", note)


tensorflow_hooks: tuple[Hook, ...] = (
    ("tensorflow.python.eager.context", _on_tf_context_import),
    ("tensorflow.python.client.session", _on_tf_session_import),
)


# -- JAX ----------------------------------------------------------------------


def jax_started() -> bool:
    """JAX's XLA backends are initialised (the moment JAX arms its own fork warning)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    probe = getattr(bridge, "backends_are_initialized", None)
    return bool(probe()) if callable(probe) else False


def _on_xla_bridge_import(module: Any, note: Note) -> None:
    # Every start goes through the module-level ``backends()`` (jax.devices,
    # the first array op, a jitted call), looked up as a module global.
    probe = getattr(module, "backends_are_initialized", None)
    if callable(probe) and not probe():
        _capture_first_call(module, "backends", "jax", note)


def jax_orphaned() -> bool:
    """JAX's CPU backend is initialised but XLA's CPU pool (``tf_XLAEigen``) has no thread.

    A fork child's state, as for TensorFlow: XLA starts that pool with the
    CPU backend (measured with JAX 0.10.2). Without a CPU backend
    (``JAX_PLATFORMS=cuda``) nothing can be told.
    """
    backends = getattr(sys.modules.get("jax._src.xla_bridge"), "_backends", None)
    return (
        isinstance(backends, dict)
        and "cpu" in backends
        and jax_started()
        and not _threads_named("tf_XLA")
    )


jax_hooks: tuple[Hook, ...] = (("jax._src.xla_bridge", _on_xla_bridge_import),)


# -- torch --------------------------------------------------------------------


def torch_started() -> bool:
    """torch's CUDA context exists, or its CPU intra-op pool (OpenMP) has workers.

    torch starts the OpenMP pool in native code on its first operation large
    enough to split across threads; a fork child of that process hangs on
    its next such operation. A process that only imported torch, or ran
    small operations, has no pool.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    probe = getattr(getattr(torch, "cuda", None), "is_initialized", None)
    if callable(probe) and probe():
        return True
    return openmp_pool_threads() > 0


def _on_torch_import(module: Any, note: Note) -> None:
    global _torch_baseline
    del module, note  # the pool starts in native code: nothing to wrap
    _torch_baseline = set(_tasks())


torch_hooks: tuple[Hook, ...] = (("torch", _on_torch_import),)
