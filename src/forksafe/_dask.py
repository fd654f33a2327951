"""Dask's serializer for proxies, so that scattering one never loads it in the client.

``client.scatter(proxy)`` serializes the proxy as a top-level object:
without a serializer of its own, distributed pickles it and then asks
``inspect.getmodule`` for its module, and a proxy's ``__module__`` is the
model's (wrapt forwards it before any code of ours runs), which loads the
model. Registered in Dask's ``"dask"`` family, a proxy is its pickle (its
source and options) and the module is never asked. The registration waits
for ``distributed.protocol.serialize`` to be imported, so importing
forksafe imports nothing of Dask's.
"""

from __future__ import annotations

import pickle
from types import ModuleType
from typing import Any

__all__ = ["install"]


def install() -> None:
    """Register the serializer when (or now, if) distributed's serialization is imported."""
    import wrapt

    wrapt.register_post_import_hook(_register, "distributed.protocol.serialize")


def _register(serialize: ModuleType) -> None:
    from forksafe._proxy import ModelProxy

    serialize.dask_serialize.register(ModelProxy)(_dumps)
    serialize.dask_deserialize.register(ModelProxy)(_loads)


def _dumps(proxy: Any) -> tuple[dict[str, Any], list[bytes]]:
    return {}, [pickle.dumps(proxy, protocol=pickle.HIGHEST_PROTOCOL)]


def _loads(header: dict[str, Any], frames: list[Any]) -> Any:
    return pickle.loads(frames[0])
