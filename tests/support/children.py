"""Run test code in another process, bounded, and get back what happened as a value.

A child's outcome is one of three, never confused: it **returned** a value,
it **raised** (a crash without an answer counts as raised:
``ChildCrashedError``), or it **timed out** and was killed. ``Outcome.get``
gives the value or raises ``ChildRaised`` / ``ChildTimedOut`` (neither an
``AssertionError``, so no ``except AssertionError`` can take one for the
other). Every wait has a deadline, and every child is killed and reaped on
every path.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from forksafe._childrun import Forked, finish_fork, run_in_context, start_fork
from forksafe.testing import ForkTimeoutError
from tests.support.workers import ROOT

__all__ = [
    "ChildRaised",
    "ChildTimedOut",
    "Outcome",
    "clean_context",
    "fork_call",
    "fork_many",
    "python_process",
    "run_clean",
    "run_python",
]

Kind = Literal["returned", "raised", "timed out"]


class ChildRaised(Exception):
    """``Outcome.get`` of a child that raised; the child's exception is the ``__cause__``."""


class ChildTimedOut(Exception):
    """``Outcome.get`` of a child that did not finish in time (it was killed)."""


@dataclass(frozen=True)
class Outcome:
    """What a child did: returned ``value``, raised ``error``, or timed out; and how long it took.

    For a timeout, ``error`` is the ``ForkTimeoutError`` (or ``TimeoutError``)
    that says so and ``traceback`` holds the child's stacks when it was killed.
    """

    kind: Kind
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    elapsed: float = 0.0

    @property
    def returned(self) -> bool:
        return self.kind == "returned"

    @property
    def raised(self) -> bool:
        return self.kind == "raised"

    @property
    def timed_out(self) -> bool:
        return self.kind == "timed out"

    def get(self) -> Any:
        """The child's value; ``ChildRaised`` or ``ChildTimedOut`` otherwise."""
        __tracebackhide__ = True
        if self.kind == "raised":
            raise ChildRaised(f"child raised:\n{self.traceback}") from self.error
        if self.kind == "timed out":
            raise ChildTimedOut(f"child timed out:\n{self.traceback}") from self.error
        return self.value


def _outcome(call: Callable[[], Any], start: float) -> Outcome:
    """``call()``'s result as an outcome: a child's timeout, exception or value."""
    try:
        value = call()
    except ForkTimeoutError as exc:
        return Outcome("timed out", None, exc, exc.stacks, time.monotonic() - start)
    except BaseException as exc:
        return Outcome("raised", None, exc, str(exc.__cause__ or exc), time.monotonic() - start)
    return Outcome("returned", value, None, "", time.monotonic() - start)


def _finished(child: Forked, deadline: float, timeout: float, start: float) -> Outcome:
    """The outcome of a child from ``start_fork``, by ``deadline``."""
    return _outcome(lambda: finish_fork(child, deadline, timeout), start)


def fork_call(fn: Callable[..., Any], *args: Any, timeout: float = 30.0, **kwargs: Any) -> Outcome:
    """Run ``fn`` in a forked child (``forksafe.testing.run_in_fork``'s way); its outcome."""
    start = time.monotonic()
    return _finished(start_fork(fn, args, kwargs), start + timeout, timeout, start)


def fork_many(fn: Callable[[int], Any], count: int, *, timeout: float = 60.0) -> list[Outcome]:
    """Fork ``count`` children that start ``fn(index)`` at the same moment; their outcomes.

    The children are released together once all exist (a race, not a
    sequence). Each that has not answered within ``timeout`` of the release
    is killed (its outcome: timed out).
    """
    go_read, go_write = os.pipe()
    children = []
    try:
        for index in range(count):
            children.append(start_fork(fn, (index,), gate=go_read))
        os.write(go_write, b"g" * count)
        start = time.monotonic()
        outcomes = []
        while children:
            outcomes.append(_finished(children.pop(0), start + timeout, timeout, start))
        return outcomes
    finally:
        os.close(go_read)
        os.close(go_write)
        for child in children:  # not collected (an error above): finish them now
            with contextlib.suppress(BaseException):
                finish_fork(child, time.monotonic(), 0.0)


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


def run_clean(
    fn: Callable[..., Any], *args: Any, timeout: float = 120.0, spawn: bool = False, **kwargs: Any
) -> Outcome:
    """Run ``fn`` in a fresh untouched process (see ``clean_context``), bounded; its outcome.

    With ``spawn=True`` the process is a plain spawned interpreter that has
    imported no framework at all. Not a daemon: scenarios may start process
    pools, which daemons cannot.
    """
    ctx = multiprocessing.get_context("spawn") if spawn else clean_context()
    start = time.monotonic()
    return _outcome(lambda: run_in_context(ctx, fn, args, kwargs, timeout, daemon=False), start)


def python_process(
    code: str, *, timeout: float = 60.0, cwd: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (dedented) in a fresh interpreter, bounded, from ``cwd`` (the repository).

    From another ``cwd``, the repository goes on ``PYTHONPATH`` so ``tests``
    imports; from the repository nothing is added (a shared host's identity
    includes ``sys.path``).
    """
    extra = dict(env)
    if cwd is not None and os.path.abspath(cwd) != ROOT:
        path = os.environ.get("PYTHONPATH")
        extra = {"PYTHONPATH": ROOT + (os.pathsep + path if path else ""), **env}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd or ROOT,
        env={**os.environ, **extra},
    )


def run_python(code: str, *, timeout: float = 60.0, cwd: str | None = None, **env: str) -> str:
    """``python_process``'s standard output; fails the test with its stderr if it exits non-zero."""
    result = python_process(code, timeout=timeout, cwd=cwd, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()
