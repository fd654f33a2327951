"""Both sides: what makes two shared hosts the same: the model's files and the environment.

A shared host serves exactly what ``load_model(...)`` would load now, in the
caller's environment. Its identity is made, at connect time, of the source
(pickled), the batching options, the *files* that define the model (each
one's resolved path, device, inode, size and modification time; a directory
by all the files under it) and the *environment* the host would run in (its
interpreter, ``sys.prefix``, forksafe's version, the variables that choose a
framework, its devices or its threads, and where the modules it will import
are found: the frameworks' and those the source names, each resolved on the
caller's ``sys.path``, which the host adopts). A redeployed file, a switched
symlink, another virtualenv or a ``sys.path`` that finds another copy of a
module is another host; the same model in the same environment is one host,
however each process's ``sys.path`` happens to be ordered or padded. The host
checks the files again around its load, so a file replaced meanwhile is never
served under the old identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import pickletools
import sys
from collections.abc import Iterable
from typing import Any

from forksafe._version import __version__

__all__ = ["environment", "files", "key", "modules_named"]

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
# What a host imports whatever the source: where these resolve is part of it.
_ALWAYS = ("forksafe", "numpy", "keras", "tensorflow", "tf_keras", "jax", "jaxlib", "torch")
_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"})


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


def modules_named(pickled: bytes) -> tuple[str, ...]:
    """The modules whose globals ``pickled`` refers to (sorted, no duplicates).

    Read from the opcodes, without unpickling: a loader or factory named by
    reference, the classes of its arguments, and what cloudpickle brought by value.
    """
    found: set[str] = set()
    memo: dict[int, Any] = {}
    recent: list[Any] = []  # what the last opcodes pushed: strings, or None for anything else
    try:
        for op, arg, _ in pickletools.genops(pickled):
            if op.name == "GLOBAL":
                found.add(str(arg).split(" ", 1)[0])
            elif op.name == "STACK_GLOBAL" and len(recent) >= 2 and isinstance(recent[-2], str):
                found.add(recent[-2])
            if op.name in _STRINGS:
                recent.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = recent[-1] if recent else None
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = recent[-1] if recent else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                recent.append(memo.get(int(str(arg))))
            else:
                recent.append(None)
            del recent[:-2]
    except Exception:  # not a pickle we can read: its modules count for nothing
        return ()
    return tuple(sorted(name for name in found if name))


def _where(module: str) -> Any:
    """Where ``module`` is imported from here (``None`` if nowhere): never imports it.

    A submodule not imported yet is known by its top-level package (finding it
    would import the package).
    """
    loaded = sys.modules.get(module)
    if loaded is None:
        module = module.split(".", 1)[0]
        loaded = sys.modules.get(module)
    try:
        spec = loaded.__spec__ if loaded is not None else importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return "unknown"
    if spec is None:
        return None
    if spec.origin not in (None, "built-in", "frozen", "namespace"):
        return os.path.realpath(spec.origin)
    return (spec.origin, tuple(os.path.realpath(p) for p in spec.submodule_search_locations or ()))


def environment(python: str, modules: Iterable[str] = ()) -> tuple[Any, ...]:
    """The identity of the environment a host started with ``python`` from here runs in.

    ``modules``: the modules the source names (``modules_named``).
    """
    variables = tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(_PREFIXES) and name not in _IGNORED
        )
    )
    names = sorted({*_ALWAYS, *modules} - {"builtins", "__main__"})
    return (
        os.path.realpath(python),
        sys.prefix,
        __version__,
        variables,
        tuple((name, _where(name)) for name in names),
    )


def key(*parts: Any) -> str:
    """A short name for an identity made of ``parts`` (plain, picklable data)."""
    digest = hashlib.sha256(pickle.dumps(parts, protocol=4)).hexdigest()
    return digest[:_KEY_HEX]
