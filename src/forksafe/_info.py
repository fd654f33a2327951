"""``forksafe.info(proxy)``: what a proxy holds in this process, without loading it."""

from __future__ import annotations

from dataclasses import dataclass

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


def info(proxy: ModelProxy) -> ProxyInfo:
    """Describe ``proxy`` in this process; never loads the model."""
    if not isinstance(proxy, ModelProxy):
        raise TypeError(f"info() takes a forksafe.ModelProxy, got {type(proxy).__name__}")
    # Read the proxy's own state directly: ``proxy.x`` could forward and load.
    model = proxy._self_model
    hosted = proxy._self_in_effect in ("process", "shared")
    meta = model.meta if hosted else {}
    return ProxyInfo(
        loaded=model is not None,
        loads=proxy._self_loads,
        owner_pid=proxy._self_owner_pid if model is not None else None,
        backend=meta.get("backend") if hosted else backend_of(model) if model is not None else None,
        graph_mode=bool(meta.get("graph_mode")) if hosted else proxy._self_owner is not None,
        isolation=proxy._self_isolation,
        in_effect=proxy._self_in_effect,
        host_pid=model.host_pid if hosted else None,
        source=proxy._self_source.describe(),
        generation=_forking.generation,
        host_log=meta.get("log"),
    )
