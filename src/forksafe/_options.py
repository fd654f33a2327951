"""What a proxy is asked to do: the isolation modes, and its options checked once.

``Isolation`` is the one place that says what each mode means; everything
else asks it (``hosted``, ``decides_here``) instead of comparing strings.
``Options`` is immutable: it is what a proxy pickles as, and what Dask
tokenizes. Settings not passed as arguments come from ``FORKSAFE_*``
environment variables, else from the defaults here; ``origins`` records which.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forksafe._source import Source

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_WAIT_MS",
    "DEFAULT_TIMEOUT",
    "ENVIRONMENT",
    "Batching",
    "Isolation",
    "Options",
    "make_options",
]

DEFAULT_TIMEOUT = 120.0
# A shared host's batching, unless asked otherwise (benchmarks/RESULTS.md).
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_MS = 5.0
# The settings an operator may give without a code change: setting -> variable.
ENVIRONMENT = {
    "isolation": "FORKSAFE_ISOLATION",
    "timeout": "FORKSAFE_TIMEOUT",
    "max_batch": "FORKSAFE_MAX_BATCH",
    "max_wait_ms": "FORKSAFE_MAX_WAIT_MS",
}


class Isolation(str, enum.Enum):
    """Where a proxy runs its model.

    - ``AUTO``: in this process where the model can run here; in a fork child
      of a process that had started the framework runtime, in a private host
      process (with a ``ForkSafeWarning``).
    - ``INPROCESS``: in this process; where it cannot run here, use raises
      ``InheritedRuntimeError`` at once.
    - ``PROCESS``: always in a private host process of this process's own.
    - ``SHARED``: in the one host process that every process of this user
      shares for this model and environment, which batches their calls.
    """

    AUTO = "auto"
    INPROCESS = "inprocess"
    PROCESS = "process"
    SHARED = "shared"

    @property
    def hosted(self) -> bool:
        """The model always runs in a host process, never in the caller's."""
        return self in (Isolation.PROCESS, Isolation.SHARED)

    @property
    def batches(self) -> bool:
        """Calls from many processes may be joined (the batching options apply)."""
        return self is Isolation.SHARED

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Batching:
    """A shared host's batching: the most rows per joined call, and the wait for company."""

    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS


@dataclass(frozen=True)
class Options:
    """A proxy's source and options, checked; what it pickles as."""

    source: Source
    isolation: Isolation = Isolation.AUTO
    timeout: float = DEFAULT_TIMEOUT
    batching: Batching | None = None  # with Isolation.SHARED only
    # Where each setting came from: "argument", "environment FORKSAFE_..." or "default".
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    def settings(self) -> dict[str, tuple[Any, str]]:
        """Each setting's value and where it came from."""
        values: dict[str, Any] = {"isolation": self.isolation.value, "timeout": self.timeout}
        if self.batching is not None:
            values["max_batch"] = self.batching.max_batch
            values["max_wait_ms"] = self.batching.max_wait_ms
        return {name: (value, self.origins.get(name, "default")) for name, value in values.items()}


def _positive_seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value > 0 and math.isfinite(value) else None


def _whole_rows(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value >= 1 else None


def _milliseconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 1000 else None


def _isolation(value: Any) -> Isolation | None:
    try:
        return Isolation(value) if isinstance(value, str) else None
    except ValueError:
        return None


# setting -> (check returning the value or None, what a valid value is)
_CHECKS = {
    "isolation": (
        _isolation,
        f"one of {tuple(i.value for i in Isolation)} (choosing: 'Which isolation?' in "
        "forksafe's documentation)",
    ),
    "timeout": (_positive_seconds, "a positive number of seconds"),
    "max_batch": (_whole_rows, "a whole number of rows, 1 or more"),
    "max_wait_ms": (_milliseconds, "between 0 and 1000 milliseconds"),
}


def _from_text(name: str, text: str) -> Any:
    """An environment variable's text as the type its setting takes."""
    if name == "isolation":
        return text.strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if name == "max_batch" and number.is_integer() else number


def _setting(name: str, argument: Any, origins: dict[str, str], default: Any) -> Any:
    """The argument if given, else the environment's value, else ``default``; checked."""
    check, valid = _CHECKS[name]
    if argument is not None:
        value = check(argument)
        if value is None:
            raise ValueError(f"{name} must be {valid}, got {argument!r}")
        origins[name] = "argument"
        return value
    variable = ENVIRONMENT[name]
    text = os.environ.get(variable)
    if text is None or not text.strip():
        origins[name] = "default"
        return default
    value = check(_from_text(name, text))
    if value is None:
        raise ValueError(f"{name} must be {valid}, got {variable}={text!r} from the environment")
    origins[name] = f"environment {variable}"
    return value


def make_options(
    source: Source, isolation: Any, timeout: Any, max_batch: Any, max_wait_ms: Any
) -> Options:
    """Options from the arguments (``None``: not given), the environment and the defaults.

    Raises:
        ValueError: a value is out of range (naming the argument or the
            environment variable it came from), or batching was asked for
            without ``isolation="shared"``.
    """
    origins: dict[str, str] = {}
    mode = _setting("isolation", isolation, origins, Isolation.AUTO)
    seconds = _setting("timeout", timeout, origins, DEFAULT_TIMEOUT)
    if not mode.batches:
        if max_batch is not None or max_wait_ms is not None:
            raise ValueError(
                "max_batch and max_wait_ms set a shared host's batching: they need "
                f"isolation='shared' (got isolation={mode.value!r}; see 'Which isolation?' in "
                "forksafe's documentation)"
            )
        # FORKSAFE_MAX_BATCH and FORKSAFE_MAX_WAIT_MS apply to shared proxies only.
        return Options(source, mode, seconds, None, origins)
    batching = Batching(
        _setting("max_batch", max_batch, origins, DEFAULT_MAX_BATCH),
        _setting("max_wait_ms", max_wait_ms, origins, DEFAULT_MAX_WAIT_MS),
    )
    return Options(source, mode, seconds, batching, origins)
