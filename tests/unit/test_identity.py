"""What a shared host's identity is made of: the modules a pickled source names."""

from __future__ import annotations

import json
import os
import pickle
import sys

import pytest

from forksafe._host import identity


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_modules_a_pickle_names_are_read_without_unpickling(protocol: int) -> None:
    """Every protocol, a global named twice (a memo reference the second time)."""
    pickled = pickle.dumps((os.path.join, json.dumps, [os.path.join], 3), protocol=protocol)
    assert identity.modules_named(pickled) == tuple(sorted({os.path.join.__module__, "json"}))


def test_what_is_not_a_pickle_names_no_module() -> None:
    """Bytes that are no pickle name nothing rather than raise."""
    assert identity.modules_named(b"\x80\x05not a pickle") == ()


def test_the_environment_changes_with_where_a_named_module_is_found() -> None:
    """The same environment twice is equal; a module named by the source is part of it."""
    here = identity.environment(sys.executable, ("json",))
    assert here == identity.environment(sys.executable, ("json",))
    assert here != identity.environment(sys.executable, ("json", "a_module_nowhere_xyz"))
