"""Fake models for the tests: framework-free, picklable, importable by a host.

Each answers ``x * 2`` (``Recorder``: ``2x + 1``) or a documented variant, so
a test can compute the reference itself. Module-level: a host, a spawned
child or a forkserver imports them by name.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

__all__ = ["CustomError", "Gadget", "HostProbe", "NumpyModel", "Recorder", "SlowToLoad", "touch"]


def _announce(path: str | None) -> None:
    """Write this process's pid to ``path`` (atomically: a reader sees all or nothing)."""
    if path is not None:
        with open(f"{path}.part", "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        os.replace(f"{path}.part", path)


class NumpyModel:
    """A framework-free model that remembers which process built it."""

    def __init__(self, scale: float = 2.0, delay: float = 0.0) -> None:
        time.sleep(delay)
        self.scale = scale
        self.built_in = os.getpid()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * self.scale

    def pid(self) -> int:
        return os.getpid()


class HostProbe:
    """A framework-free model with methods that exercise the host boundary."""

    value = 42

    def __init__(self) -> None:
        self.built_in = os.getpid()

    def echo(self, x: Any) -> Any:
        return x

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2.0

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def hold(self, x: Any, seconds: float, announce: str | None = None) -> Any:
        """Return ``x`` after ``seconds``; first write ``announce``, so a test knows it is in."""
        _announce(announce)
        time.sleep(seconds)
        return x

    def pid(self) -> int:
        return os.getpid()

    def unpicklable(self) -> Any:
        return threading.Lock()

    def boom(self) -> None:
        raise ValueError("boom from the host")

    def shout(self, text: str) -> str:
        """Print to the host's stdout and stderr, unflushed, as model code does."""
        print(f"{text} on stdout")
        print(f"{text} on stderr", file=sys.stderr)
        return text

    def gadget(self, path: str) -> Any:
        """A value whose unpickling would run code (it writes ``path``) where it is decoded."""
        return Gadget(path)

    def custom_error(self) -> None:
        raise CustomError("custom from the host", 7)


class CustomError(LookupError):
    """An exception class of the model's own (not a builtin, not forksafe's)."""


def touch(path: str) -> str:
    """Write this process's pid to ``path`` (what a gadget runs when unpickled)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(str(os.getpid()))
    return path


class Gadget:
    """Unpickles by calling ``touch``: a stand-in for a hostile pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return touch, (self.path,)


class SlowToLoad:
    """A model whose load announces the host's pid in a file, then waits while asked to."""

    def __init__(self, announce: str, hold_while: str) -> None:
        with open(announce, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        deadline = time.monotonic() + 30
        while os.path.exists(hold_while) and time.monotonic() < deadline:
            time.sleep(0.01)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2.0


class Recorder:
    """A row-wise model for a shared host: answers ``2x + 1`` and records each batch's rows."""

    def __init__(self, tag: str = "", delay: float = 0.0, load_seconds: float = 0.0) -> None:
        time.sleep(load_seconds)  # a large model's load
        self.tag = tag  # a test's own tag: its own shared host
        self.delay = delay
        self.batches: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(int(x.shape[0]))
        time.sleep(self.delay)
        return x * 2.0 + 1.0

    def rows_seen(self) -> list[int]:
        return list(self.batches)

    def pid(self) -> int:
        return os.getpid()

    def hang(self, seconds: float, announce: str | None = None) -> float:
        """Return after ``seconds``; first write ``announce``, so a test knows it is in."""
        _announce(announce)
        time.sleep(seconds)
        return seconds

    def frameworks(self) -> list[str]:
        return sorted(m for m in ("tensorflow", "keras", "torch", "jax") if m in sys.modules)
