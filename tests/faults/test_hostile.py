"""Peers of another user get nothing from a template (same-user peers: test_handshake.py)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket

import pytest

from forksafe._host import client_private as host_tree
from tests.faults.conftest import Tracked
from tests.procs import children_of

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
    read_fd, write_fd = os.pipe()
    address = _address()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(address)
            closed = sock.recv(1) == b""  # the template hangs up without a word
            os.write(write_fd, b"closed" if closed else b"spoke")
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        assert select.select([read_fd], [], [], 30)[0], "the other user's peer never reported"
        assert os.read(read_fd, 16) == b"closed"
    finally:
        os.close(read_fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not _new_hosts(tracked, before), "a host was forked for another user"
