"""Which framework runtimes this process started, and which it inherited across a fork.

A runtime is *started* once it owns native thread pools (TensorFlow's eager
context or a TF1 session, JAX's XLA backends, torch's CUDA context). A fork
child of a process that had started one inherits the memory but not the
threads, so any later framework work in the child hangs. Nothing here imports
a framework: every probe looks only at modules already in ``sys.modules``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from forksafe import _forking
from forksafe._frameworks import BACKENDS, display
from forksafe._scopes import continued_from

__all__ = ["BackendState", "RuntimeState", "runtime_state"]

# Frames from these packages are the framework's own; the start location we
# report is the first frame outside them.
_INTERNAL_PACKAGES = (
    "tensorflow",
    "tf_keras",
    "keras",
    "jax",
    "jaxlib",
    "torch",
    "wrapt",
    "h5py",
    "numpy",
    "absl",
    "importlib",
)
_FORKSAFE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class _Start:
    pid: int
    location: str | None


@dataclass(frozen=True)
class BackendState:
    """One framework runtime as seen from this process.

    Attributes:
        name: ``"tensorflow"``, ``"jax"`` or ``"torch"``.
        imported: the framework's module is in ``sys.modules``.
        started: this process started the runtime (it can run models).
        inherited: a parent started it before forking this process; model
            work here would hang.
        parent_pid: the pid that started the inherited runtime.
        started_at: ``file:line`` of the first start, where it was captured.
    """

    name: str
    imported: bool
    started: bool
    inherited: bool
    parent_pid: int | None
    started_at: str | None


@dataclass(frozen=True)
class RuntimeState:
    """Runtime state of every supported framework in this process.

    Attributes:
        pid: the process this describes.
        tensorflow: TensorFlow (Keras 3 on TensorFlow, tf_keras).
        jax: JAX (also Keras 3 with the JAX backend).
        torch: PyTorch; only its CUDA context counts as a started runtime.
    """

    pid: int
    tensorflow: BackendState
    jax: BackendState
    torch: BackendState

    @property
    def backends(self) -> tuple[BackendState, ...]:
        """All backends, in a fixed order."""
        return (self.tensorflow, self.jax, self.torch)

    @property
    def inherited(self) -> tuple[BackendState, ...]:
        """The backends whose runtime this process inherited from a parent."""
        return tuple(b for b in self.backends if b.inherited)


def _threads_named(prefix: str) -> bool:
    """Whether a native thread of this process has a name starting with ``prefix``.

    TF1 sessions start ``tf_*`` pools without setting the eager context
    handle; their native threads are invisible to ``threading``.
    """
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm", encoding="utf-8", errors="replace") as f:
                if f.read().startswith(prefix):
                    return True
        except OSError:
            continue
    return False


def _tensorflow_started() -> bool:
    if "tensorflow" not in sys.modules:
        return False
    ctx_module = sys.modules.get("tensorflow.python.eager.context")
    ctx = getattr(ctx_module, "_context", None)
    if ctx is not None and getattr(ctx, "_context_handle", None) is not None:
        return True
    return _threads_named("tf_")


def _jax_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    probe = getattr(bridge, "backends_are_initialized", None)
    return bool(probe()) if callable(probe) else False


def _torch_started() -> bool:
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    probe = getattr(cuda, "is_initialized", None)
    return bool(probe()) if callable(probe) else False


_PROBES: dict[str, Callable[[], bool]] = {
    "tensorflow": _tensorflow_started,
    "jax": _jax_started,
    "torch": _torch_started,
}

# Written by the capture hooks, by loads through a proxy, and at fork time.
_starts: dict[str, _Start] = {}
_inherited: dict[str, _Start] = {}
_pending: dict[str, _Start] = {}
_capture_lock = threading.Lock()


def _internal_dirs() -> tuple[str, ...]:
    dirs = [_FORKSAFE_DIR]
    for name in _INTERNAL_PACKAGES:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)))
    return tuple(dirs)


def caller_location(frame: FrameType | None = None) -> str | None:
    """``file:line`` of the innermost frame outside forksafe and the frameworks."""
    internal = _internal_dirs()
    frame = frame if frame is not None else sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(("<frozen", "<string")) and not filename.startswith(internal):
            return f"{filename}:{frame.f_lineno}"
        frame = continued_from(frame)  # a load thread continues in its caller
    return None


def note_started(backend: str, location: str | None = None) -> None:
    """Record that this process started ``backend`` (first record wins)."""
    if backend in _starts and _starts[backend].pid == os.getpid():
        return
    with _capture_lock:
        if backend not in _starts or _starts[backend].pid != os.getpid():
            _starts[backend] = _Start(os.getpid(), location or caller_location())


def _capture_first_call(owner: type, attr: str, backend: str) -> None:
    """Wrap ``owner.attr`` so its first call records who started ``backend``.

    The wrapper restores the original before calling it, so the framework's
    own hot path is untouched afterwards.
    """
    original = owner.__dict__.get(attr)
    if original is None or getattr(original, "__forksafe_capture__", False):
        return

    def first_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        setattr(owner, attr, original)
        note_started(backend, caller_location(sys._getframe(1)))
        return original(self, *args, **kwargs)

    first_call.__forksafe_capture__ = True  # type: ignore[attr-defined]
    setattr(owner, attr, first_call)


def _on_tf_context_import(module: Any) -> None:
    context = getattr(module, "Context", None)
    ctx = getattr(module, "_context", None)
    if context is not None and getattr(ctx, "_context_handle", None) is None:
        _capture_first_call(context, "ensure_initialized", "tensorflow")


def _on_tf_session_import(module: Any) -> None:
    session = getattr(module, "BaseSession", None)
    if session is not None and not _threads_named("tf_"):
        _capture_first_call(session, "__init__", "tensorflow")


def install() -> None:
    """Register the at-fork callbacks and the start-capture hooks (once, at import)."""
    _forking.at_fork(
        "runtime state",
        before=lambda: before_fork(_forking.loading()),
        after_in_parent=after_fork_in_parent,
        after_in_child=after_fork_in_child,
    )
    install_capture_hooks()


def install_capture_hooks() -> None:
    """Arrange to record where TensorFlow is first started, if that is still ahead."""
    import wrapt

    wrapt.register_post_import_hook(_on_tf_context_import, "tensorflow.python.eager.context")
    wrapt.register_post_import_hook(_on_tf_session_import, "tensorflow.python.client.session")


def _started_here(name: str) -> bool:
    if name in _inherited:
        return False
    if not _PROBES[name]():
        return False
    start = _starts.get(name)
    # Backstop for forks that skipped Python's at-fork hooks: the runtime is
    # up but the recorded start belongs to another pid.
    return start is None or start.pid == os.getpid()


def inherited(names: Iterable[str] = BACKENDS) -> dict[str, _Start]:
    """The runtimes among ``names`` that this process inherited from a started parent."""
    found: dict[str, _Start] = {}
    for name in names:
        record = _inherited.get(name)
        if record is None:
            start = _starts.get(name)
            if start is not None and start.pid != os.getpid() and _PROBES[name]():
                record = start
        if record is not None:
            found[name] = record
    return found


def before_fork(loading: Iterable[str] = ()) -> None:
    """Parent side: snapshot which runtimes are started (or inherited) right now.

    ``loading`` names models being loaded by other threads at this moment: a
    framework caught halfway through its start-up is treated as started,
    since its locks may be held by a thread the child will not have.
    """
    snapshot = dict(_inherited)
    loads = list(loading)
    for name in BACKENDS:
        if name in snapshot:
            continue
        if _started_here(name):
            start = _starts.get(name)
            snapshot[name] = _Start(os.getpid(), start.location if start else None)
        elif loads and name in sys.modules:
            snapshot[name] = _Start(os.getpid(), f"(loading {', '.join(loads)} in another thread)")
    _pending.clear()
    _pending.update(snapshot)


def after_fork_in_parent() -> None:
    """Parent side: drop the snapshot."""
    _pending.clear()


def after_fork_in_child() -> None:
    """Child side: everything started before the fork is now inherited and dead."""
    _inherited.update(_pending)
    _pending.clear()
    # Only reached with starts left over when the fork skipped the parent's
    # ``before`` hook (see ``_forking.check_pid``): probe them here instead.
    for name, start in _starts.items():
        if name not in _inherited and start.pid != os.getpid() and _PROBES[name]():
            _inherited[name] = start
    _starts.clear()


def _state(name: str) -> BackendState:
    record = inherited((name,)).get(name)
    start = _starts.get(name)
    return BackendState(
        name=name,
        imported=name in sys.modules,
        started=record is None and _started_here(name),
        inherited=record is not None,
        parent_pid=record.pid if record else None,
        started_at=record.location if record else (start.location if start else None),
    )


def runtime_state() -> RuntimeState:
    """Report, per framework, whether this process started its runtime or inherited it.

    Never imports a framework and never starts a runtime.
    """
    return RuntimeState(
        pid=os.getpid(),
        tensorflow=_state("tensorflow"),
        jax=_state("jax"),
        torch=_state("torch"),
    )


def note_loaded() -> None:
    """After a load: record the runtimes now up, for fork children's backstop."""
    for name in BACKENDS:
        start = _starts.get(name)
        if (start is None or start.pid != os.getpid()) and _PROBES[name]():
            note_started(name, caller_location())


def explain_inherited(blocked: dict[str, _Start], *, what: str) -> str:
    """The message of ``InheritedRuntimeError``: what happened, where, and the fixes."""
    parts = []
    for name, start in blocked.items():
        if start.location is None:
            where = " (where: unknown; import forksafe before the framework to record it)"
        elif start.location.startswith("("):
            where = f" {start.location}"
        else:
            where = f" at {start.location}"
        parts.append(f"{display(name)} was started in parent process {start.pid}{where}")
    return (
        f"cannot use model {what!r} in process {os.getpid()}: "
        + "; ".join(parts)
        + ", before this process was forked from it. The runtime's thread pools do not "
        "survive fork, so running the model here would hang. Fixes: keep the parent from "
        "running the framework (no predict, load_model or other ops at import time: let the "
        "proxy load in the workers); or start workers with the 'spawn' or 'forkserver' "
        "method; or let forksafe run the model in a host process of its own "
        "(isolation='process', or the default isolation='auto')."
    )


def explain_hosted(blocked: dict[str, _Start], *, what: str) -> str:
    """The ``ForkSafeWarning`` when ``auto`` moves a model out of process."""
    first = next(iter(blocked.items()))
    name, start = first
    where = f" at {start.location}" if start.location and not start.location.startswith("(") else ""
    return (
        f"model {what!r} runs in a separate host process, because {display(name)} was "
        f"started in parent process {start.pid}{where} before this process ({os.getpid()}) "
        "was forked, and cannot run here. Each call now crosses a process boundary (tens of "
        "microseconds, plus a copy of large arrays) and the host costs its own memory. To run "
        "in-process, keep the parent from running the framework or start workers with "
        "'spawn'/'forkserver'; pass isolation='process' to choose the host and silence this, "
        "or isolation='inprocess' to get an error instead."
    )
