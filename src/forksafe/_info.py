"""``forksafe.info(proxy)``: what a proxy holds in this process, without loading it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forksafe import _forking
from forksafe._frameworks import backend_of
from forksafe._proxy import ModelProxy

__all__ = ["ProxyInfo", "info"]


@dataclass(frozen=True)
class ProxyInfo:
    """A snapshot of one proxy in the current process.

    Attributes:
        loaded: the model is loaded in this process.
        loads: how many times this process loaded it (1 once loaded; 0 before).
        owner_pid: the pid that loaded the model now held, or ``None``.
        backend: the framework that runs the model (``"tensorflow"``,
            ``"jax"``, ``"torch"``), or ``None`` when not loaded or unknown.
        graph_mode: the model lives in a TF1 graph and session that every
            call re-enters.
        isolation: the isolation option the proxy was created with.
        in_effect: where the model runs now, ``"inprocess"``, ``"shared"`` or
            ``"process"``; ``None`` when not loaded in this process.
        host_pid: the pid of the host process serving the model, if any.
        host_log: where a shared host writes its output (its model's prints,
            progress bars, errors), if the model runs in one.
        source: the path, or the factory's name.
        generation: how many forks lie between this process and the
            process that imported forksafe first.
        settings: each setting (``isolation``, ``timeout``, and for a shared
            proxy ``max_batch`` and ``max_wait_ms``) as ``(value, origin)``,
            where origin is ``"argument"``, ``"environment FORKSAFE_..."`` or
            ``"default"``.
        host: with ``info(proxy, host=True)``, a shared host's own figures, as
            ``forksafe hosts`` shows them
            (``pid``, ``source``, ``state``, ``clients``, ``calls``,
            ``batches``, ``mean_rows_per_batch``, ``queue_wait_p50_ms``,
            ``queue_wait_p99_ms``, ``uptime_s``, ``pss_kb``, ``log``,
            ``python``, ``environment`` ...), asked of it with a short
            bound; ``None`` in-process, for a private host, or when it did
            not answer.
    """

    loaded: bool
    loads: int
    owner_pid: int | None
    backend: str | None
    graph_mode: bool
    isolation: str
    in_effect: str | None
    host_pid: int | None
    source: str
    generation: int
    host_log: str | None = None
    settings: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    host: Mapping[str, Any] | None = None


def info(proxy: ModelProxy, *, host: bool = False) -> ProxyInfo:
    """Describe ``proxy`` in this process; never loads the model.

    With ``host=True``, a shared proxy's host is also asked for its own
    figures (``ProxyInfo.host``), over a short connection of its own;
    without it, ``info`` does no I/O at all.
    """
    if not isinstance(proxy, ModelProxy):
        raise TypeError(f"info() takes a forksafe.ModelProxy, got {type(proxy).__name__}")
    # Read the proxy's own state directly: ``proxy.x`` could forward and load.
    options = proxy._self_options
    held = proxy._self_held
    remote = held.model if held is not None and held.in_effect.hosted else None
    meta = remote.meta if remote is not None else {}
    if remote is not None:
        backend, graph_mode = meta.get("backend"), bool(meta.get("graph_mode"))
    elif held is not None:
        backend, graph_mode = backend_of(held.model), held.owner is not None
    else:
        backend, graph_mode = None, False
    return ProxyInfo(
        loaded=held is not None,
        loads=int(held is not None),
        owner_pid=held.pid if held is not None else None,
        backend=backend,
        graph_mode=graph_mode,
        isolation=options.isolation.value,
        in_effect=held.in_effect.value if held is not None else None,
        host_pid=remote.host_pid if remote is not None else None,
        source=options.source.describe(),
        generation=_forking.generation,
        host_log=meta.get("log"),
        settings=options.settings(),
        host=remote.host_stats() if host and remote is not None else None,
    )
