"""Which calls a shared host may join, and how rows are joined and split back."""

from __future__ import annotations

import numpy as np

from forksafe._host.host_batching import batch_key, join, split


def test_calls_that_agree_on_all_but_the_rows_share_a_key() -> None:
    """Same method, options and trailing shape: one key; rows counted."""
    a, rows_a = batch_key("predict", (np.zeros((3, 4)),), {"verbose": 0})
    b, rows_b = batch_key("predict", (np.ones((5, 4)),), {"verbose": 0})
    assert a == b and (rows_a, rows_b) == (3, 5)


def test_anything_else_runs_alone() -> None:
    """Other methods, shapes, dtypes, options, extra arguments, scalars: no key."""
    base, _ = batch_key("predict", (np.zeros((3, 4)),), {})
    assert batch_key("predict", (np.zeros((3, 5)),), {})[0] != base
    assert batch_key("predict", (np.zeros((3, 4), "float32"),), {})[0] != base
    assert batch_key("predict", (np.zeros((3, 4)),), {"verbose": 1})[0] != base
    assert batch_key("fit", (np.zeros((3, 4)),), {})[0] is None
    assert batch_key("predict", (np.zeros((3, 4)), np.zeros(3)), {})[0] is None
    assert batch_key("predict", (np.float64(1.0),), {})[0] is None
    assert batch_key("predict", (np.zeros(()),), {})[0] is None
    assert batch_key("predict", ([np.zeros((2, 1)), np.zeros((3, 1))],), {})[0] is None


def test_join_and_split_are_inverse_row_for_row() -> None:
    """Arrays, lists and dicts of arrays: joined in order, split back exactly."""
    rng = np.random.default_rng(3)
    parts = [
        {"a": rng.standard_normal((n, 2)), "b": [rng.standard_normal((n, 3))]} for n in (1, 4, 2)
    ]
    joined = join(parts)
    assert joined["a"].shape == (7, 2) and joined["b"][0].shape == (7, 3)
    back = split(joined, [1, 4, 2])
    assert back is not None
    for got, want in zip(back, parts, strict=True):
        np.testing.assert_array_equal(got["a"], want["a"])
        np.testing.assert_array_equal(got["b"][0], want["b"][0])


def test_a_result_whose_first_axis_is_not_the_rows_cannot_be_split() -> None:
    """A scalar, or a different number of rows: None (the calls then run alone)."""
    assert split(np.float64(3.0), [1, 2]) is None
    assert split(np.zeros((4, 2)), [1, 2]) is None
    assert split({"a": np.zeros((3, 1)), "n": 5}, [1, 2]) is None
