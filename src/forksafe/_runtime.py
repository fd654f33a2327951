"""Which framework runtimes this process started, and which it inherited across a fork.

A runtime is *started* once it owns native thread pools (TensorFlow's eager
context or a TF1 session, JAX's XLA backends, torch's CPU thread pool or CUDA
context). A fork child of a process that had started one inherits the memory
but not the threads, so any later framework work in the child hangs. Nothing
here imports a framework: every probe (see ``_probes``) looks only at modules
already in ``sys.modules``.
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
from forksafe._frameworks import BACKENDS, FRAMEWORKS, display, framework
from forksafe._probes import Note
from forksafe._scopes import continued_from

__all__ = ["BackendState", "RuntimeState", "runtime_state"]

# Frames from these packages are the framework's own; the start location we
# report is the first frame outside them.
_INTERNAL_PACKAGES = (
    *(package for row in FRAMEWORKS for package in row.packages),
    "keras",
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
        torch: PyTorch: its CPU thread pool (OpenMP) or its CUDA context.
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


def _note_frame(backend: str, frame: FrameType | None) -> None:
    """The capture hooks' callback: ``backend`` starts now, called from ``frame``."""
    note_started(backend, caller_location(frame))


def _with_note(hook: Callable[[Any, Note], None]) -> Callable[[Any], None]:
    def run(module: Any) -> None:
        hook(module, _note_frame)

    return run


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
    """Arrange to record where each framework is first started, if that is still ahead."""
    import wrapt

    for row in FRAMEWORKS:
        for module, hook in row.hooks:
            wrapt.register_post_import_hook(_with_note(hook), module)


def _orphan(name: str) -> bool:
    """Whether ``name`` was inherited from a parent that never imported forksafe (recorded once).

    Such a parent's fork hooks never ran, so nothing was recorded; the
    runtime's state shows it instead (see ``Framework.orphaned``). The
    parent is taken to be the direct parent.
    """
    if name in _inherited:
        return True
    start = _starts.get(name)
    if (start is not None and start.pid == os.getpid()) or not framework(name).orphaned():
        return False
    with _capture_lock:
        _inherited.setdefault(name, _Start(os.getppid(), None))
    return True


def _started_here(name: str) -> bool:
    if _orphan(name):
        return False
    if not framework(name).started():
        return False
    start = _starts.get(name)
    # Backstop for forks that skipped Python's at-fork hooks: the runtime is
    # up but the recorded start belongs to another pid.
    return start is None or start.pid == os.getpid()


def inherited(names: Iterable[str] = BACKENDS) -> dict[str, _Start]:
    """The runtimes among ``names`` that this process inherited from a started parent."""
    found: dict[str, _Start] = {}
    for name in names:
        record = _inherited.get(name) if _orphan(name) else None
        if record is None:
            start = _starts.get(name)
            if start is not None and start.pid != os.getpid() and framework(name).started():
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
    for name in BACKENDS:
        _orphan(name)
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
        if name not in _inherited and start.pid != os.getpid() and framework(name).started():
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
        if (start is None or start.pid != os.getpid()) and framework(name).started():
            note_started(name, caller_location())


def _where(name: str, start: _Start) -> str:
    if start.location is None:
        return f" (where: not recorded: {framework(name).unrecorded})"
    if start.location.startswith("("):
        return f" {start.location}"
    return f" at {start.location}"


def explain_inherited(blocked: dict[str, _Start], *, what: str) -> str:
    """The message of ``InheritedRuntimeError``: what happened, where, and the fixes."""
    parts = [
        f"{display(name)} was started in parent process {start.pid}{_where(name, start)}"
        for name, start in blocked.items()
    ]
    avoid = "; ".join(framework(name).avoid for name in blocked)
    return (
        f"cannot use model {what!r} in process {os.getpid()}: "
        + "; ".join(parts)
        + ", before this process was forked from it. The runtime's thread pools do not "
        "survive fork, so running the model here would hang. Fixes: keep the parent from "
        f"running the framework ({avoid}: let the proxy load in the workers); or start "
        "workers with the 'spawn' or 'forkserver' method; or let forksafe run the model in a "
        "host process of its own (isolation='process', or the default isolation='auto'). "
        "Choosing an isolation: 'Which isolation?' in forksafe's documentation."
    )


def explain_hosted(blocked: dict[str, _Start], *, what: str) -> str:
    """The ``ForkSafeWarning`` when ``auto`` moves a model out of process."""
    name, start = next(iter(blocked.items()))
    where = f" at {start.location}" if start.location and not start.location.startswith("(") else ""
    return (
        f"model {what!r} runs in a separate host process, because {display(name)} was "
        f"started in parent process {start.pid}{where} before this process ({os.getpid()}) "
        "was forked, and cannot run here. Each call now crosses a process boundary (a round "
        "trip per call, plus a copy of large arrays) and the host costs its own memory. To run "
        f"in-process, keep the parent from running the framework ({framework(name).avoid}) "
        "or start workers with 'spawn'/'forkserver'; pass isolation='process' to choose the "
        "host and silence this, or isolation='inprocess' to get an error instead. What each "
        "isolation costs: 'Which isolation?' in forksafe's documentation."
    )
