"""Run a function in a forked child or a fresh interpreter, bounded, with stacks on timeout.

The child registers ``faulthandler`` on ``SIGUSR1`` before running anything.
When the deadline passes the parent sends ``SIGUSR1`` (faulthandler writes
every thread's Python stack even while the child is stuck in C code, as a
hung framework call is), waits a moment, kills the child and raises
``ForkTimeoutError`` carrying those stacks.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import pickle
import select
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import IO, Any, TypeVar

from forksafe._errors import ForkSafeError

__all__ = [
    "ChildCrashedError",
    "ForkTimeoutError",
    "Forked",
    "finish_fork",
    "run_in_context",
    "run_in_fork",
    "run_in_subprocess",
    "start_fork",
]

T = TypeVar("T")
_DUMP_WAIT = 1.0  # seconds for faulthandler to write the stacks before the kill


class ForkTimeoutError(ForkSafeError, TimeoutError):
    """The child did not finish in time; it was killed. ``stacks`` says where it was."""

    def __init__(self, message: str, stacks: str) -> None:
        super().__init__(f"{message}\n\nPython stacks of the child when it was stopped:\n{stacks}")
        self.stacks = stacks


class ChildCrashedError(ForkSafeError, ChildProcessError):
    """The child died without an answer (a signal, ``os._exit``, a crash)."""


class RemoteTraceback(Exception):
    """The child's traceback, chained as the ``__cause__`` of a re-raised exception."""

    def __str__(self) -> str:
        return str(self.args[0])


def _outcome(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        payload: tuple[Any, ...] = (True, fn(*args, **kwargs), "")
    except BaseException as exc:
        payload = (False, exc, traceback.format_exc())
    try:
        return pickle.dumps(payload)
    except Exception as exc:
        if payload[0]:
            error = TypeError(f"the child's result cannot be pickled: {exc}")
            return pickle.dumps((False, error, traceback.format_exc()))
        text = payload[2]
        return pickle.dumps(
            (False, RuntimeError(f"{type(payload[1]).__name__}: {payload[1]}"), text)
        )


def _result(data: bytes) -> Any:
    ok, value, text = pickle.loads(data)
    if ok:
        return value
    value.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    raise value


def _stacks(dump: IO[bytes]) -> str:
    dump.seek(0)
    text = dump.read().decode("utf-8", "replace").strip()
    return text or "(the child wrote no stacks before it was killed)"


def _stop(pid: int, dump: IO[bytes], what: str, timeout: float) -> ForkTimeoutError:
    try:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(_DUMP_WAIT)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return ForkTimeoutError(
        f"{what} did not finish within {timeout} s and was killed", _stacks(dump)
    )


def _reap(pid: int) -> int:
    """Wait for ``pid``, bounded: kill it if it lingers after answering."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


class Forked:
    """A forked child started by ``start_fork``: its pid, its answer pipe, its stack dump."""

    def __init__(self, pid: int, fd: int, dump: IO[bytes]) -> None:
        self.pid = pid
        self.fd = fd
        self.dump = dump


def start_fork(
    fn: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    gate: int | None = None,
) -> Forked:
    """Fork a child that runs ``fn`` (after reading a byte from ``gate``, if given).

    Collect its answer with ``finish_fork``: every child started must be
    finished, which reaps it.
    """
    read_fd, write_fd = os.pipe()
    dump = tempfile.TemporaryFile()  # noqa: SIM115  (closed by finish_fork)
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_fd)
            faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
            if gate is not None:
                os.read(gate, 1)  # released together with its siblings: a race
            data = memoryview(_outcome(fn, args, kwargs or {}))
            while data:
                data = data[os.write(write_fd, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return Forked(pid, read_fd, dump)


def finish_fork(child: Forked, deadline: float, timeout: float) -> Any:
    """The child's result, by ``deadline`` (``time.monotonic``); its exception is raised here.

    Past the deadline the child is killed and ``ForkTimeoutError`` raised
    with its stacks; a child that died without answering raises
    ``ChildCrashedError``. The child is reaped on every path.
    """
    __tracebackhide__ = True
    chunks: list[bytes] = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _stop(child.pid, child.dump, f"forked child {child.pid}", timeout)
            if select.select([child.fd], [], [], remaining)[0]:
                chunk = os.read(child.fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(child.fd)
        status = _reap(child.pid)
        child.dump.close()
    if not chunks:
        raise ChildCrashedError(
            f"forked child {child.pid} died without an answer ({_status(status)})"
        )
    return _result(b"".join(chunks))


def run_in_fork(fn: Callable[..., T], *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a forked child and return its (pickled) result.

    An exception in the child is raised here, with the child's traceback as
    its ``__cause__``. A child that does not finish within ``timeout``
    seconds is killed and
    [`ForkTimeoutError`][forksafe.testing.ForkTimeoutError] raised with its
    Python stacks at that moment. A child that dies without answering raises
    [`ChildCrashedError`][forksafe.testing.ChildCrashedError]. ``fn`` need
    not be picklable; its result must be.
    """
    __tracebackhide__ = True  # pytest: show the user's frames, not these
    child = start_fork(fn, args, kwargs)
    return finish_fork(child, time.monotonic() + timeout, timeout)  # type: ignore[no-any-return]


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"killed by signal {number} ({signal.Signals(number).name})"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _spawned(
    conn: Any, dump_path: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with open(dump_path, "wb") as dump:
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
        conn.send_bytes(_outcome(fn, args, kwargs))


def run_in_subprocess(fn: Callable[..., T], *args: Any, timeout: float = 30.0, **kwargs: Any) -> T:
    """Like [`run_in_fork`][forksafe.testing.run_in_fork], in a fresh interpreter (``spawn``).

    For code that must not see this process's state: nothing imported or
    started here exists there. ``fn``, its arguments and its result must be
    picklable (``fn`` defined at module level).
    """
    __tracebackhide__ = True
    spawn = multiprocessing.get_context("spawn")
    return run_in_context(spawn, fn, args, kwargs, timeout)  # type: ignore[no-any-return]


def run_in_context(
    ctx: Any,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timeout: float,
    *,
    daemon: bool = True,
) -> Any:
    """``run_in_subprocess`` with a ``multiprocessing`` context of the caller's (a forkserver).

    ``daemon=False`` lets ``fn`` start processes of its own (a pool).
    """
    __tracebackhide__ = True
    receiver, sender = ctx.Pipe(duplex=False)
    with tempfile.NamedTemporaryFile(prefix="forksafe-stacks-") as dump:
        process = ctx.Process(
            target=_spawned, args=(sender, dump.name, fn, args, kwargs), daemon=daemon
        )
        process.start()
        sender.close()
        try:
            if not receiver.poll(timeout):
                assert process.pid is not None
                raise _stop(process.pid, dump, f"subprocess {process.pid}", timeout)
            data = receiver.recv_bytes()
        except EOFError:
            process.join(5)
            raise ChildCrashedError(
                f"subprocess {process.pid} died without an answer (exit code {process.exitcode})"
            ) from None
        finally:
            receiver.close()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
    return _result(data)
