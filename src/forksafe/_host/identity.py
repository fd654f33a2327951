"""Both sides: what makes two shared hosts the same: the model's files and the environment.

A shared host serves exactly what ``load_model(...)`` would load now, in the
caller's environment. Its identity is made, at connect time, of the source
(pickled), the batching options, the *files* that define the model (each
one's resolved path, device, inode, size and modification time; a directory
by all the files under it) and the *environment* the host would run in (its
interpreter, ``sys.prefix``, ``sys.path``, forksafe's version, and the
variables that choose a framework, its devices or its threads). A redeployed
file, a switched symlink or another virtualenv is another host; the same
model in the same environment is one host. The host checks the files again
around its load, so a file replaced meanwhile is never served under the old
identity.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from collections.abc import Iterable
from typing import Any

from forksafe._version import __version__

__all__ = ["environment", "files", "key"]

# Variables that choose a framework, its devices or how it runs: another value
# may give another model (or none). Logging levels change nothing served.
_PREFIXES = (
    "KERAS_",
    "TF_",
    "JAX_",
    "XLA_",
    "CUDA_",
    "NVIDIA_",
    "HIP_",
    "ROCR_",
    "TORCH_",
    "PYTORCH_",
    "OMP_",
    "MKL_",
)
_IGNORED = frozenset({"TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_CPP_VMODULE"})
_KEY_HEX = 24  # 96 bits: the socket's name stays short


def _stat(path: str) -> tuple[Any, ...]:
    try:
        info = os.stat(path)
    except OSError as exc:
        return (path, "missing", exc.errno)
    return (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def files(paths: Iterable[str]) -> tuple[tuple[Any, ...], ...]:
    """The identity of the files at ``paths`` as they are now (symlinks followed)."""
    found: list[tuple[Any, ...]] = []
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isdir(real):
            found.append(_stat(real))
            continue
        found.append((real, "directory"))
        for root, dirs, names in os.walk(real):
            dirs.sort()
            for name in sorted(names):
                whole = os.path.join(root, name)
                found.append((os.path.relpath(whole, real), *_stat(whole)[1:]))
    return tuple(found)


def environment(python: str) -> tuple[Any, ...]:
    """The identity of the environment a host started with ``python`` from here runs in."""
    variables = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(_PREFIXES) and name not in _IGNORED
        )
    )
    return (
        os.path.realpath(python),
        sys.prefix,
        tuple(p or os.getcwd() for p in sys.path),
        __version__,
        variables,
    )


def key(*parts: Any) -> str:
    """A short name for an identity made of ``parts`` (plain, picklable data)."""
    digest = hashlib.sha256(pickle.dumps(parts, protocol=4)).hexdigest()
    return digest[:_KEY_HEX]
