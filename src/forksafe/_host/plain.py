"""Both sides: the plain-data rule, in one place.

What crosses from a host to its client is plain data only: builtin scalars
and containers, numpy arrays and scalars, and forksafe's shared-array
references. The host converts what the model gives (``to_plain``: tensors
as arrays, container subclasses as builtin ones) and checks it
(``is_plain``); the client decodes replies with ``loads``, which admits
exactly those types and nothing that would run code. So a host is a decode
boundary: code that runs in the host does not run in the client through its
answers.
"""

from __future__ import annotations

import inspect
import pickle
from typing import IO, Any

import numpy as np

from forksafe._errors import HostError
from forksafe._frameworks import to_numpy

__all__ = [
    "describe",
    "is_plain",
    "loads",
    "signature_from_plain",
    "signature_to_plain",
    "to_plain",
]

_PLAIN = frozenset({type(None), bool, int, float, complex, str, bytes})

# What a reply may contain besides pickle's own types: what ``is_plain`` admits.
_ALLOWED = frozenset(
    {
        ("builtins", "complex"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("forksafe._host.shm", "Shared"),
    }
)


def to_plain(obj: Any) -> Any:
    """``obj`` as a host answers with it: tensors as arrays, containers as builtin ones.

    Subclasses of dict, list and tuple (an ``OrderedDict`` such as torch's
    ``state_dict()``, a named tuple) become plain ones; anything else stays.
    """
    if isinstance(obj, dict):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_plain(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(item) for item in obj)
    return to_numpy(obj)


def is_plain(obj: Any) -> bool:
    """Plain data: builtin scalars, numpy values, and lists/tuples/dicts/sets of them.

    Exact types only: what passes here is what ``loads`` admits.
    """
    kind = type(obj)
    if kind in _PLAIN:
        return True
    if kind in (list, tuple, set, frozenset):
        return all(is_plain(item) for item in obj)
    if kind is dict:
        return all(is_plain(k) and is_plain(v) for k, v in obj.items())
    if kind is np.ndarray:
        return not obj.dtype.hasobject
    return isinstance(obj, np.dtype) or (isinstance(obj, np.generic) and obj.dtype != object)


def describe(value: Any) -> str:
    """What a value that is not plain data is, for messages."""
    kind = type(value)
    if isinstance(value, list | tuple | set | frozenset) and value:
        inner = sorted({type(item).__qualname__ for item in value if not is_plain(item)})
        return f"a {kind.__qualname__} of {', '.join(inner)}"
    return f"a {kind.__module__}.{kind.__qualname__}"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise HostError(
            f"the model host sent a {module}.{name}, which forksafe does not decode: a host "
            "answers with plain data only (numbers, strings, numpy arrays, and lists, tuples "
            "and dicts of them)"
        )


def loads(stream: IO[bytes]) -> Any:
    """Unpickle ``stream``, admitting plain data only."""
    return _PlainUnpickler(stream).load()


class _Shown:
    """An annotation or default of the host's, shown as the host showed it (its repr)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _shown(value: Any) -> tuple[str, Any]:
    if value is inspect.Parameter.empty:
        return ("empty", None)
    if is_plain(value):
        return ("value", value)
    return ("repr", inspect.formatannotation(value) if isinstance(value, type) else repr(value))


def _unshown(shown: tuple[str, Any]) -> Any:
    kind, value = shown
    if kind == "empty":
        return inspect.Parameter.empty
    return value if kind == "value" else _Shown(str(value))


def signature_to_plain(fn: Any) -> Any:
    """``inspect.signature(fn)`` as plain data (defaults and annotations not plain: as text)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without one, say
        return None
    return (
        [
            (p.name, int(p.kind), _shown(p.default), _shown(p.annotation))
            for p in signature.parameters.values()
        ],
        _shown(signature.return_annotation),
    )


def signature_from_plain(data: Any) -> inspect.Signature | None:
    """The signature ``signature_to_plain`` described, as the host would show it."""
    if data is None:
        return None
    parameters, returned = data
    return inspect.Signature(
        [
            inspect.Parameter(
                name,
                inspect._ParameterKind(kind),
                default=_unshown(default),
                annotation=_unshown(annotation),
            )
            for name, kind, default, annotation in parameters
        ],
        return_annotation=_unshown(returned),
    )
