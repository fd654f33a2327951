"""What users call to make a proxy: ``load_model`` and ``lazy_model``, options checked."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from forksafe._options import Isolation, make_options
from forksafe._proxy import ModelProxy
from forksafe._source import Source

__all__ = ["lazy_model", "load_model"]


def load_model(
    source: str | os.PathLike[str],
    *,
    loader: Callable[..., Any] | None = None,
    isolation: str | Isolation | None = None,
    timeout: float | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    **load_kwargs: Any,
) -> ModelProxy:
    """Return a proxy that loads the model at ``source`` lazily, once per process.

    Nothing is loaded and no framework is imported until the proxy is used
    (``bool``, ``hash``, ``==``, ``repr``, pickling and shipping it to Dask,
    Ray or Spark never load); see [`ModelProxy`][forksafe.ModelProxy].

    Args:
        source: path to a ``.keras`` file, an ``.h5``/``.hdf5`` file or a
            TensorFlow SavedModel directory. Made absolute now, so a worker
            that changes directory still finds it.
        loader: a picklable callable ``loader(source, **load_kwargs)``. The
            default is ``keras.models.load_model``, or
            ``tf_keras.models.load_model`` when ``TF_USE_LEGACY_KERAS=1``.
            With Keras 3 a SavedModel directory is wrapped in
            ``keras.layers.TFSMLayer`` inside a ``keras.Sequential``
            (inference only: ``predict``, ``predict_on_batch``, ``__call__``).
        isolation: where the model runs (see [`Isolation`][forksafe.Isolation]
            and the guide "Which isolation?"): ``"auto"`` in this process
            where it can run there, else in a host process of its own with a
            [`ForkSafeWarning`][forksafe.ForkSafeWarning]; ``"inprocess"``
            here, or [`InheritedRuntimeError`][forksafe.InheritedRuntimeError]
            at once where it cannot run here; ``"process"`` always in a host
            of its own; ``"shared"`` in the one host that this user's
            processes share for this model and environment, which batches
            their calls. Not given: ``FORKSAFE_ISOLATION``, else ``"auto"``.
        timeout: seconds that any one wait on a host may take (starting it,
            loading, each call; default 120); on expiry the host is stopped
            and [`HostTimeoutError`][forksafe.HostTimeoutError] raised.
            Unused in-process. Not given: ``FORKSAFE_TIMEOUT``, else 120.
        max_batch: with ``isolation="shared"``: the most rows one joined
            call may hold (not given: ``FORKSAFE_MAX_BATCH``, else 64; 1
            turns batching off).
        max_wait_ms: with ``isolation="shared"``: how long a call may wait
            for others to join it (not given: ``FORKSAFE_MAX_WAIT_MS``, else
            5 ms).
        **load_kwargs: passed to the loader (``custom_objects``, ``compile``,
            ``safe_mode`` ...; Keras' ``safe_mode`` stays on).

    Raises:
        TypeError: ``source`` is not a path, or ``loader`` is not callable.
        ValueError: ``source`` is empty, ``isolation`` is unknown,
            ``timeout`` is not a positive number, or the batching options
            are out of range or given without ``isolation="shared"``; or a
            ``FORKSAFE_*`` environment variable holds an invalid value (the
            message names it).
    """
    source_ = Source(path=_checked_path(source), loader=_checked_loader(loader), kwargs=load_kwargs)
    return ModelProxy(make_options(source_, isolation, timeout, max_batch, max_wait_ms))


def _checked_path(source: Any) -> str:
    """``source`` as an absolute path, or the TypeError/ValueError that says what to pass."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a path (str or os.PathLike) to a .keras or .h5 file or a "
            f"SavedModel directory, got {type(source).__name__}; for a model built by code "
            "use forksafe.lazy_model(factory)"
        )
    path = os.fspath(source)
    if not isinstance(path, str):
        raise TypeError(f"source must be a text path, got {type(path).__name__}")
    if not path:
        raise ValueError("source is an empty path")
    return os.path.abspath(path)


def _checked_loader(loader: Any) -> Callable[..., Any] | None:
    if loader is not None and not callable(loader):
        raise TypeError(f"loader must be callable, got {type(loader).__name__}")
    return loader  # type: ignore[no-any-return]


def lazy_model(
    factory: Callable[..., Any],
    *args: Any,
    isolation: str | Isolation | None = None,
    timeout: float | None = None,
    max_batch: int | None = None,
    max_wait_ms: float | None = None,
    **kwargs: Any,
) -> ModelProxy:
    """Return a proxy whose model is ``factory(*args, **kwargs)``, built lazily per process.

    ``factory`` must be picklable (a module-level function) for the proxy to
    reach spawned workers, and for ``isolation="process"`` or ``"shared"``.
    ``isolation``, ``timeout``, ``max_batch`` and ``max_wait_ms`` are as for
    [`load_model`][forksafe.load_model] (and are not passed to ``factory``).
    Nothing is built and no framework is imported until the proxy is used.

    Raises:
        TypeError: ``factory`` is not callable.
        ValueError: as for [`load_model`][forksafe.load_model].
    """
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    source = Source(factory=factory, args=args, kwargs=kwargs)
    return ModelProxy(make_options(source, isolation, timeout, max_batch, max_wait_ms))
