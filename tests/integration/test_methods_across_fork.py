"""A method taken from a proxy before a fork works in the child, in every isolation."""

from __future__ import annotations

import os
import uuid
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.host_scenarios import stop_shared
from tests.support.children import fork_call, run_clean
from tests.support.fakes import NumpyModel, Recorder

pytestmark = pytest.mark.timeout(300)


def method_across_fork(isolation: str) -> dict[str, Any]:
    """In an untouched parent: take ``predict``, use it, fork, call it in the child."""
    proxy = forksafe.lazy_model(Recorder, uuid.uuid4().hex, isolation=isolation, timeout=60)
    try:
        predict = proxy.predict
        x = np.arange(6.0).reshape(2, 3)
        parent_y = predict(x)

        def child() -> dict[str, Any]:
            return {"y": predict(-x), "info": forksafe.info(proxy), "me": os.getpid()}

        return {
            "x": x,
            "parent_y": parent_y,
            "parent": forksafe.info(proxy),
            "child": fork_call(child, timeout=120).get(),
            "parent_y_after": predict(x),
        }
    finally:
        if isolation == "shared":
            stop_shared(proxy)


@pytest.mark.parametrize("isolation", ["auto", "inprocess", "process", "shared"])
def test_a_method_taken_before_a_fork_answers_in_the_child(isolation: str) -> None:
    """``predict = MODEL.predict`` taken and used in the parent, then called in a fork child.

    The child's answers are right and come from where its own proxy runs the
    model: its own load, its own private host, or the one shared host of all.
    """
    got = run_clean(method_across_fork, isolation, timeout=240).get()
    x, parent, child = got["x"], got["parent"], got["child"]
    for y, sign in ((got["parent_y"], 1), (child["y"], -1), (got["parent_y_after"], 1)):
        np.testing.assert_array_equal(y, sign * x * 2.0 + 1.0)
    info = child["info"]
    assert info.loaded and info.owner_pid == child["me"]
    assert info.in_effect == parent.in_effect == ("inprocess" if isolation == "auto" else isolation)
    if isolation == "shared":
        assert info.host_pid == parent.host_pid is not None
    elif isolation == "process":
        assert info.host_pid not in (None, parent.host_pid)
    else:
        assert info.host_pid is None


def method_reached_in_a_fork_child() -> dict[str, Any]:
    """In an untouched parent: use ``proxy.predict``, fork, reach it again in the child."""
    proxy = forksafe.lazy_model(NumpyModel, isolation="inprocess")
    x = np.arange(3.0)
    proxy.predict(x)  # the proxy now keeps the parent's method

    def child() -> dict[str, Any]:
        method = proxy.predict
        return {"me": os.getpid(), "bound_in": method.__self__.built_in, "y": method(x)}

    return {"x": x, "parent": os.getpid(), "child": fork_call(child, timeout=60).get()}


def test_a_method_reached_in_a_fork_child_is_the_childs() -> None:
    """The method a proxy kept in the parent is never what ``proxy.predict`` gives a child."""
    got = run_clean(method_reached_in_a_fork_child, timeout=120).get()
    child = got["child"]
    assert child["bound_in"] == child["me"] != got["parent"]
    np.testing.assert_array_equal(child["y"], got["x"] * 2.0)
