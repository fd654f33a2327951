"""The one table of frameworks: names, packages, runtime probes and hooks, conversions to numpy.

Nothing here imports a framework: every function looks only at modules
already in ``sys.modules`` or at the type of a value it was given. The
probes and capture hooks themselves live in ``_probes``, one section per
framework.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from forksafe import _probes

__all__ = [
    "BACKENDS",
    "FRAMEWORKS",
    "PRELOADABLE",
    "Framework",
    "backend_of",
    "concurrent_calls",
    "display",
    "framework",
    "framework_of_value",
    "imported",
    "to_numpy",
]


@dataclass(frozen=True)
class Framework:
    """One runtime forksafe knows how to detect and convert from.

    Attributes:
        name: the backend's name (``"tensorflow"``, ``"jax"``, ``"torch"``),
            as in ``runtime_state()`` and ``info().backend``.
        display: how messages name it.
        packages: top-level packages whose objects run on this runtime.
        started: the probe: is the runtime started in this process (cheap,
            never imports or starts anything).
        orphaned: is the runtime's state here but its threads gone, as in a
            fork child of a parent that ran it before importing forksafe.
        hooks: ``(module, hook)`` pairs: ``hook(module, note)`` runs once
            that module is imported and arranges for ``note`` to be called
            where the runtime starts.
        unrecorded: why a start location can be missing, for messages.
        avoid: how to keep the parent from starting the runtime, for messages.
        concurrent_calls: one model may be called from several threads at
            once. Keras on JAX may not: its calls donate the variables'
            buffers, and a concurrent call then finds them deleted.
    """

    name: str
    display: str
    packages: tuple[str, ...]
    started: Callable[[], bool]
    orphaned: Callable[[], bool]
    hooks: tuple[_probes.Hook, ...]
    unrecorded: str
    avoid: str
    concurrent_calls: bool = True


_BEFORE_IMPORT = "it started before forksafe was imported; import forksafe first to record it"
FRAMEWORKS: tuple[Framework, ...] = (
    Framework(
        "tensorflow",
        "TensorFlow",
        ("tensorflow", "tf_keras"),
        _probes.tensorflow_started,
        _probes.tensorflow_orphaned,
        _probes.tensorflow_hooks,
        _BEFORE_IMPORT,
        "no predict, load_model or other ops at import time",
    ),
    Framework(
        "jax",
        "JAX",
        ("jax", "jaxlib", "flax"),
        _probes.jax_started,
        _probes.jax_orphaned,
        _probes.jax_hooks,
        _BEFORE_IMPORT,
        "no array ops, jax.devices() or jitted calls before forking",
        concurrent_calls=False,
    ),
    Framework(
        "torch",
        "PyTorch",
        ("torch",),
        _probes.torch_started,
        _probes.never,  # the OpenMP pool's state lives in native code only
        _probes.torch_hooks,
        "torch starts its CPU thread pool in native code, on its first operation large "
        "enough to split across threads (or its CUDA context on first GPU use)",
        "no large CPU operations or CUDA work before forking, or run them single-threaded: "
        "torch.set_num_threads(1) or OMP_NUM_THREADS=1 in the parent",
    ),
)
BACKENDS: tuple[str, ...] = tuple(f.name for f in FRAMEWORKS)
_BY_NAME = {f.name: f for f in FRAMEWORKS}
_BY_PACKAGE = {package: f.name for f in FRAMEWORKS for package in f.packages}

# Modules a host template imports ahead of time when the client has them:
# a host then costs a fork, not an import.
PRELOADABLE = ("tensorflow", "keras", "tf_keras", "jax", "torch")


def framework(name: str) -> Framework:
    """The table's row for backend ``name``."""
    return _BY_NAME[name]


_ALL_PACKAGES = tuple(sorted({*PRELOADABLE, *_BY_PACKAGE}))


def imported() -> bool:
    """Whether this process has imported any framework (Keras included)."""
    modules = sys.modules
    return any(name in modules for name in _ALL_PACKAGES)


def display(name: str) -> str:
    """The name messages use for backend ``name``."""
    framework = _BY_NAME.get(name)
    return framework.display if framework is not None else name


def backend_of(model: object) -> str | None:
    """The framework that runs ``model``, from the package its class comes from.

    A ``functools.partial`` (a Flax-style ``apply`` with its parameters
    bound) is judged by the function it wraps.
    """
    while isinstance(model, functools.partial):
        model = model.func
    package = type(model).__module__.partition(".")[0]
    if package == "keras":
        config = getattr(sys.modules.get("keras"), "config", None)
        return str(config.backend()) if config is not None else None
    return _BY_PACKAGE.get(package)


def concurrent_calls(model: object) -> bool:
    """Whether threads may call ``model`` at once (unknown frameworks: yes, as before)."""
    framework = _BY_NAME.get(backend_of(model) or "")
    return framework is None or framework.concurrent_calls


def framework_of_value(value: object) -> str | None:
    """The framework a tensor-like ``value`` belongs to, or ``None`` for anything else."""
    return _BY_PACKAGE.get(type(value).__module__.partition(".")[0])


def to_numpy(value: Any) -> Any:
    """A framework tensor or variable as a numpy array (detached, on the CPU); else as is.

    Keras 3 variables count too, whatever their backend.

    torch refuses ``numpy()`` on a tensor that requires grad or lives on a
    GPU, so it is detached and copied to the CPU first.
    """
    if isinstance(value, np.ndarray | np.generic):
        return value
    package = type(value).__module__.partition(".")[0]
    framework = _BY_PACKAGE.get(package, "keras" if package == "keras" else None)
    if framework is None or not hasattr(value, "__array__"):
        return value
    try:
        if framework == "torch":
            return value.detach().cpu().numpy()
        return np.asarray(value)
    except Exception:  # symbolic, say: it stays what it is, and says so where it matters
        return value
