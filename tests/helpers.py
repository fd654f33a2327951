"""Bounded ways to run test code in another process: a fork, or a clean parent.

Every wait here has a deadline, and every child is killed and reaped on
every path, so no test can hang the run or leave a process behind.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import select
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ChildTimeout(AssertionError):
    """The child did not finish in time (it was killed)."""


@dataclass
class Outcome:
    """What a child returned or raised, and how long it took."""

    value: Any
    error: BaseException | None
    traceback: str
    elapsed: float

    def get(self) -> Any:
        if self.error is not None:
            raise AssertionError(f"child raised:\n{self.traceback}") from self.error
        return self.value


def _reap(pid: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def fork_call(fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Outcome:
    """Run ``fn`` in a forked child; return its outcome, or kill it at ``timeout``."""
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            signal.alarm(int(timeout) + 5)  # in case the parent is gone
            try:
                payload = (fn(*args, **kwargs), None, "")
            except BaseException as exc:
                payload = (None, exc, traceback.format_exc())
            try:
                data = pickle.dumps(payload)
            except Exception as exc:
                data = pickle.dumps(
                    (None, RuntimeError(f"unpicklable outcome: {exc!r}"), traceback.format_exc())
                )
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = start + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                raise ChildTimeout(f"forked child {pid} did not finish within {timeout} s")
            ready, _, _ = select.select([read_fd], [], [], remaining)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        status = _reap(pid, time.monotonic() + 5)
    elapsed = time.monotonic() - start
    if not chunks:
        raise AssertionError(f"forked child {pid} died without an answer (status {status})")
    value, error, tb = pickle.loads(b"".join(chunks))
    return Outcome(value, error, tb, elapsed)


_clean: Any = None


def clean_context() -> Any:
    """A forkserver whose server imported Keras and forksafe but never ran TensorFlow.

    Each process it forks is an *untouched parent*: the one state in which
    forked children can still run TensorFlow. Starting one costs a fork,
    not a TensorFlow import.
    """
    global _clean
    if _clean is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "keras", "forksafe", "tests.scenarios"])
        _clean = ctx
    return _clean


def _entry(
    conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    start = time.monotonic()
    try:
        payload = (fn(*args, **kwargs), None, "")
    except BaseException as exc:
        payload = (None, exc, traceback.format_exc())
    conn.send((*payload, time.monotonic() - start))
    conn.close()


def run_clean(
    fn: Callable[..., Any], *args: Any, timeout: float = 120.0, spawn: bool = False, **kwargs: Any
) -> Outcome:
    """Run ``fn`` in a fresh untouched process (see ``clean_context``), bounded.

    With ``spawn=True`` the process is a plain spawned interpreter that has
    imported no framework at all.
    """
    ctx = multiprocessing.get_context("spawn") if spawn else clean_context()
    receiver, sender = ctx.Pipe(duplex=False)
    # Not a daemon: scenarios may start process pools, which daemons cannot.
    process = ctx.Process(target=_entry, args=(sender, fn, args, kwargs))
    process.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise ChildTimeout(f"clean process did not finish within {timeout} s")
        value, error, tb, elapsed = receiver.recv()
    except EOFError:
        raise AssertionError(f"clean process died (exit code {process.exitcode})") from None
    finally:
        receiver.close()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
    return Outcome(value, error, tb, elapsed)
