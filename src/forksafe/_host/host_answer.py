"""Host side: the one answerer: what a host does for each request, private or shared.

A request is a tuple whose first item names the operation:

- ``("load", loader, what)``: run ``loader()`` (it returns the model and the TF1
  graph that owns it, or ``None``); answered with what was loaded (``meta``).
- ``("call", name, args, kwargs)``: call the model (``name`` None) or its
  method, inside its graph if it has one; answered with the result as plain
  data.
- ``("getattr", name)``: ``("callable", its name and doc)`` or ``("value",
  plain data)``.
- ``("setattr", name, value)``, ``("delattr", name)``.
- ``("dir",)``: the model's attribute names; ``("signature", name)``: the
  signature of the model (``name`` None) or its method, as plain data.

Anything the model gives back is converted and checked as plain data
(``plain``) before it is sent; what cannot cross is a ``HostError`` naming
it. A load that fails for any reason (the loader cannot be unpickled here,
a framework is missing, the file is bad) is a ``ModelLoadError``.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from forksafe._errors import ForkSafeError, HostError, ModelLoadError
from forksafe._frameworks import backend_of
from forksafe._host.plain import describe, is_plain, signature_to_plain, to_plain

__all__ = ["Answerer", "attribute", "invoke", "plain_result"]


def invoke(model: Any, owner: Any, name: str | None, args: Any, kwargs: Any) -> Any:
    """Call the model (``name`` None) or its method, inside its TF1 graph if it has one."""
    fn = model if name is None else getattr(model, name)
    return fn(*args, **kwargs) if owner is None else owner.call(fn, *args, **kwargs)


def attribute(model: Any, name: str) -> tuple[str, Any]:
    """``("callable", what the client shows of it)`` or ``("value", plain data)``."""
    value = getattr(model, name)
    if callable(value):
        doc = getattr(value, "__doc__", None)
        qualname = getattr(value, "__qualname__", None)
        return (
            "callable",
            {
                "doc": doc if isinstance(doc, str) else None,
                "qualname": qualname if isinstance(qualname, str) else name,
                "signature": signature_to_plain(value),
            },
        )
    value = to_plain(value)
    if not is_plain(value):
        raise HostError(
            f"attribute {name!r} of the model is {describe(value)}, which cannot "
            "cross a process boundary; with the model in a host process only plain data "
            "attributes (numbers, strings, arrays, and lists/tuples/dicts of them) and "
            "method calls work"
        )
    return ("value", value)


def plain_result(result: Any, name: str | None) -> Any:
    """A call's result as plain data (tensors as arrays), or a HostError naming its type."""
    result = to_plain(result)
    if not is_plain(result):
        what = "calling the model" if name is None else f"{name}()"
        raise HostError(
            f"{what} returned {describe(result)}, which cannot cross a process boundary "
            "(it ran in the host); a hosted model answers with plain data only: numbers, "
            "strings, arrays, and lists/tuples/dicts of them"
        )
    return result


class Answerer:
    """Holds a host's model and answers requests about it (raising what goes wrong)."""

    def __init__(self) -> None:
        self.model: Any = None
        self.owner: Any = None
        self.meta: dict[str, Any] = {}

    def load(self, loader: Any, describe_source: str = "the model") -> dict[str, Any]:
        """Run the loader (or its pickle); every failure is a ``ModelLoadError``."""
        try:
            run = pickle.loads(loader) if isinstance(loader, bytes) else loader
        except Exception as exc:
            raise ModelLoadError(
                f"the model host cannot unpickle the loader of {describe_source} "
                f"({type(exc).__name__}: {exc}); a loader or factory must be importable by "
                "name (defined at module level in a module other than __main__)"
            ) from exc
        try:
            self.model, self.owner = run()
        except ForkSafeError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not load {describe_source} in the model host (pid {os.getpid()}, "
                f"Python {sys.executable}): {type(exc).__name__}: {exc}"
            ) from exc
        kind = type(self.model)
        self.meta = {
            "backend": backend_of(self.model),
            "graph_mode": self.owner is not None,
            "type": f"{kind.__module__}.{kind.__qualname__}",
        }
        return self.meta

    def answer(self, request: tuple[Any, ...]) -> Any:
        """The answer to one request (see the module's docstring), or the exception raised."""
        op = request[0]
        if op == "call":
            _, name, args, kwargs = request
            return plain_result(invoke(self.model, self.owner, name, args, kwargs), name)
        if op == "getattr":
            return attribute(self.model, request[1])
        if op == "setattr":
            setattr(self.model, request[1], request[2])
            return None
        if op == "delattr":
            delattr(self.model, request[1])
            return None
        if op == "dir":
            return sorted(str(name) for name in dir(self.model))
        if op == "signature":
            name = request[1]
            return signature_to_plain(self.model if name is None else getattr(self.model, name))
        if op == "load":
            return self.load(request[1], repr(request[2]))
        raise HostError(f"unknown request {op!r}")
