"""The exceptions forksafe raises: one base, each also a fitting builtin."""

from __future__ import annotations

__all__ = ["ForkSafeError", "InheritedRuntimeError", "ModelLoadError"]


class ForkSafeError(Exception):
    """Base class of every error forksafe raises."""


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
