"""Bounded ways to run test code in another process: a fork, or a clean parent.

Every wait here has a deadline, and every child is killed and reaped on
every path, so no test can hang the run or leave a process behind.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from forksafe.testing import ForkTimeoutError, run_in_fork


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


def fork_call(fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Outcome:
    """Run ``fn`` in a forked child (``forksafe.testing.run_in_fork``); return its outcome.

    The child's exception becomes ``Outcome.error`` instead of being raised, so
    tests can assert on it; a child past ``timeout`` is killed (``ChildTimeout``).
    """
    start = time.monotonic()
    try:
        value = run_in_fork(fn, *args, timeout=timeout, **kwargs)
    except ForkTimeoutError as exc:
        raise ChildTimeout(str(exc)) from exc
    except BaseException as exc:
        return Outcome(None, exc, str(exc.__cause__ or ""), time.monotonic() - start)
    return Outcome(value, None, "", time.monotonic() - start)


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


def run_python(code: str, *, timeout: float = 60.0, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (``env`` added to the environment), bounded.

    Returns its standard output; fails the test with its standard error if it
    exits non-zero.
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def fork_many(fn: Callable[[int], Any], count: int, *, timeout: float = 60.0) -> list[Outcome]:
    """Fork ``count`` children that start ``fn(index)`` at the same moment; their outcomes.

    The children are released together once all exist (a race, not a
    sequence). Each is killed if it has not answered within ``timeout``.
    """
    import pickle
    import select
    import signal

    go_read, go_write = os.pipe()
    children: list[tuple[int, int]] = []
    try:
        for index in range(count):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child
                code = 1
                try:
                    os.close(read_fd)
                    os.read(go_read, 1)
                    start = time.monotonic()
                    try:
                        payload = (fn(index), None, "")
                    except BaseException as exc:
                        payload = (None, exc, traceback.format_exc())
                    data = pickle.dumps((*payload, time.monotonic() - start))
                    while data:
                        data = data[os.write(write_fd, data) :]
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_fd)
            children.append((pid, read_fd))
        os.write(go_write, b"g" * count)
        outcomes = []
        deadline = time.monotonic() + timeout
        for pid, read_fd in children:
            chunks = []
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([read_fd], [], [], remaining)[0]:
                    raise ChildTimeout(f"forked child {pid} did not answer within {timeout} s")
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
            if not chunks:
                raise AssertionError(f"forked child {pid} died without an answer")
            value, error, tb, elapsed = pickle.loads(b"".join(chunks))
            outcomes.append(Outcome(value, error, tb, elapsed))
        return outcomes
    finally:
        os.close(go_read)
        os.close(go_write)
        for pid, read_fd in children:
            os.close(read_fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
