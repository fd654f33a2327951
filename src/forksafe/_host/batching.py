"""Dynamic batching for a shared host: which calls may be joined, joining, splitting back.

Two calls may be joined when they call the same method with the same
keyword arguments and one positional argument each: an array, or a list,
tuple or dict of arrays, agreeing on everything but the first axis (the
rows). The joined call runs once on the rows of all of them; its result is
split back by rows, so each caller gets exactly its own. A result that
cannot be split that way (its first axis is not the rows) makes each call
run alone instead.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

__all__ = ["BATCHABLE", "batch_key", "join", "split"]

# Methods that map rows to rows: what a shared host joins.
BATCHABLE = frozenset({None, "predict", "predict_on_batch", "predict_step", "forward"})


def _leaves(x: Any) -> list[Any] | None:
    """The arrays of a batchable argument, in a fixed order; ``None`` if it is not one."""
    if isinstance(x, np.ndarray):
        return [x] if x.ndim >= 1 and not x.dtype.hasobject else None
    if type(x) in (list, tuple):
        found = [_leaves(item) for item in x]
    elif type(x) is dict:
        found = [_leaves(x[k]) for k in sorted(x, key=repr)]
    else:
        return None
    if not found or any(f is None for f in found):
        return None
    return [leaf for f in found for leaf in f]  # type: ignore[union-attr]


def _shape_key(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ("a", x.dtype.str, x.shape[1:])
    if isinstance(x, dict):
        return ("d", tuple((k, _shape_key(x[k])) for k in sorted(x, key=repr)))
    return (type(x).__name__, tuple(_shape_key(item) for item in x))


def batch_key(
    method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...] | None, int]:
    """What this call may be joined with (``None``: nothing), and its rows."""
    if method not in BATCHABLE or len(args) != 1:
        return None, 0
    leaves = _leaves(args[0])
    if not leaves or len({leaf.shape[0] for leaf in leaves}) != 1:
        return None, 0
    try:
        options = pickle.dumps(sorted(kwargs.items()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None, 0
    return (method, options, _shape_key(args[0])), int(leaves[0].shape[0])


def join(arguments: list[Any]) -> Any:
    """One argument holding the rows of all ``arguments`` (of one key), in order."""
    first = arguments[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(arguments)
    if isinstance(first, dict):
        return {k: join([a[k] for a in arguments]) for k in first}
    return type(first)(join([a[i] for a in arguments]) for i in range(len(first)))


def split(result: Any, rows: list[int]) -> list[Any] | None:
    """``result`` cut back into one piece per call, by ``rows``; ``None`` if it cannot be."""
    total = sum(rows)
    if isinstance(result, np.ndarray):
        if result.ndim == 0 or result.shape[0] != total:
            return None
        bounds = np.cumsum(rows)[:-1]
        return [part.copy() for part in np.split(result, bounds)]
    if type(result) in (list, tuple):
        pieces = [split(item, rows) for item in result]
        if not pieces or any(p is None for p in pieces):
            return None
        return [type(result)(p[i] for p in pieces) for i in range(len(rows))]  # type: ignore[index]
    if type(result) is dict:
        parts = {k: split(v, rows) for k, v in result.items()}
        if not parts or any(p is None for p in parts.values()):
            return None
        return [{k: p[i] for k, p in parts.items()} for i in range(len(rows))]  # type: ignore[index]
    return None
