"""Peers of another user get nothing from a template (same-user peers: test_handshake.py)."""

from __future__ import annotations

import os
import socket

import pytest

from forksafe._host import client_private as host_tree
from tests.faults.conftest import Tracked
from tests.support.children import fork_call
from tests.support.procs import children_of

pytestmark = pytest.mark.timeout(300)
NOBODY = 65534


def _address() -> str:
    assert host_tree._templates is not None
    return host_tree._templates.address


def _new_hosts(tracked: Tracked, before: set[int]) -> set[int]:
    return set(children_of(tracked.template)) - before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user (uid 65534)")
def test_another_user_cannot_get_a_host(tracked: Tracked) -> None:
    """A peer of another uid is closed on accept: no host is forked for it."""
    before = set(children_of(tracked.template))
    address = _address()

    def as_nobody() -> str:
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(address)
            return "closed" if sock.recv(1) == b"" else "spoke"  # hung up without a word?

    assert fork_call(as_nobody, timeout=30).get() == "closed"
    assert not _new_hosts(tracked, before), "a host was forked for another user"
