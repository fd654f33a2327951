"""forksafe: load a machine-learning model once, use it safely across fork and threads.

``forksafe.load_model(path)`` returns a proxy that loads lazily in the process
that uses it, never reuses a model that crossed a fork, re-enters the TF1
graph and session that own the model on every call, and fails fast with a
clear error (instead of hanging) in a fork child whose parent had already
started the framework runtime.
"""

from forksafe import _dask, _forking, _runtime
from forksafe._api import lazy_model, load_model
from forksafe._errors import (
    ForkSafeError,
    ForkSafeWarning,
    HostCrashedError,
    HostError,
    HostTimeoutError,
    InheritedRuntimeError,
    ModelLoadError,
)
from forksafe._info import ProxyInfo, info
from forksafe._inject import inject
from forksafe._options import Isolation
from forksafe._proxy import ModelProxy
from forksafe._runtime import BackendState, RuntimeState, runtime_state
from forksafe._version import __version__

__all__ = [
    "BackendState",
    "ForkSafeError",
    "ForkSafeWarning",
    "HostCrashedError",
    "HostError",
    "HostTimeoutError",
    "InheritedRuntimeError",
    "Isolation",
    "ModelLoadError",
    "ModelProxy",
    "ProxyInfo",
    "RuntimeState",
    "__version__",
    "info",
    "inject",
    "lazy_model",
    "load_model",
    "runtime_state",
]

_forking.install()
_runtime.install()
_dask.install()
