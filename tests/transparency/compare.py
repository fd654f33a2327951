"""Comparing outcomes, strictly: equal results by value, or the same exception and message.

Arrays compare to a tolerance; objects by what they hold (a variable's value,
a config, a history: see ``runner.normalize``); exceptions by type *and*
message (addresses and temporary paths taken out by the runner). One side
raising and the other not is a difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def same_value(a: Any, b: Any) -> bool:
    """Equal plain data; arrays equal to 1e-4 (tensors and arrays alike, by their values)."""
    if isinstance(a, tuple) and a and a[0] in ("array", "tensor"):
        return (
            isinstance(b, tuple)
            and b[:1] in (("array",), ("tensor",))
            and a[0] == b[0]
            and np.shape(a[1]) == np.shape(b[1])
            and np.allclose(a[1], b[1], atol=1e-4)
        )
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, atol=1e-4))
    return bool(a == b)


def same_outcome(bare: tuple[Any, ...], other: tuple[Any, ...]) -> bool:
    """Both returned equal results, or both raised the same exception with the same message."""
    if bare[0] != other[0]:
        return False
    if bare[0] == "raised":
        return bool(bare[1:3] == other[1:3])
    return same_value(bare[1], other[1])


def show(outcome: tuple[Any, ...]) -> str:
    """A short description for failure messages."""
    if outcome[0] == "raised":
        return f"raised {outcome[1]}: {outcome[2]}\n{outcome[3]}"
    return f"returned {outcome[1]!r}"[:1500]
