"""The exceptions forksafe raises: one base, each also a fitting builtin."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

__all__ = [
    "ForkSafeError",
    "ForkSafeWarning",
    "HostCrashedError",
    "HostError",
    "HostTimeoutError",
    "InheritedRuntimeError",
    "ModelLoadError",
]


class ForkSafeError(Exception):
    """Base class of every error forksafe raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt by calling the class, never by a builtin base's ``__new__``:
        # with two builtin bases (``HostTimeoutError``: RuntimeError and
        # TimeoutError) tblib's pickling, which Dask installs, would call the
        # wrong one and fail to send the error.
        return type(self), self.args, self.__dict__ or None


class ModelLoadError(ForkSafeError, OSError):
    """The model could not be loaded: missing, empty, truncated, corrupt or unsupported.

    The message names the source and what was wrong; the loader's own
    exception, when there was one, is chained as ``__cause__``. A failed load
    is not cached: the next use of the proxy tries again.
    """


class InheritedRuntimeError(ForkSafeError, RuntimeError):
    """This process is a fork child of a process that had started the framework runtime.

    The runtime's thread pools did not survive the fork, so any model work in
    this process would hang. Raised at once, before any framework call.
    """


class HostError(ForkSafeError, RuntimeError):
    """The out-of-process model host could not do what was asked.

    Raised for values that cannot cross a process boundary (the message names
    the attribute) and as the base of the host's failure modes.
    """


class HostCrashedError(HostError):
    """The model host died during a call (killed, out of memory, crashed).

    The next call through the proxy starts a new host.
    """


class HostTimeoutError(HostError, TimeoutError):
    """The model host did not answer in time; it was stopped, and the next call starts anew."""


class ForkSafeWarning(UserWarning):
    """Something works, but not the way you probably expect (for example, out of process)."""


# Frames of these files are forksafe's (or wrapt's pure-Python fallback): a warning
# names the first frame outside them, the user's line.
_OURS = (os.path.dirname(os.path.abspath(__file__)) + os.sep, f"{os.sep}wrapt{os.sep}")


def warn(message: str) -> None:
    """A ``ForkSafeWarning`` attributed to the user's line, however deep forksafe's frames."""
    frame = sys._getframe(1)
    level = 2  # the caller of this function
    while frame.f_back is not None and any(p in frame.f_code.co_filename for p in _OURS):
        frame = frame.f_back
        level += 1
    warnings.warn(message, ForkSafeWarning, stacklevel=level)


# Tracebacks and pickles name them where users import them from: ``forksafe.HostError``.
for _public in (
    ForkSafeError,
    ModelLoadError,
    InheritedRuntimeError,
    HostError,
    HostCrashedError,
    HostTimeoutError,
    ForkSafeWarning,
):
    _public.__module__ = "forksafe"
del _public
