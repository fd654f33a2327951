"""Hostile and broken peers of a template: they get nothing, and honest clients are not held up."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection

import numpy as np
import pytest

from forksafe._host import tree as host_tree
from forksafe._host import wire
from tests.faults.conftest import Tracked
from tests.procs import children_of, wait_gone

pytestmark = pytest.mark.timeout(300)
NOBODY = 65534


def _address() -> str:
    assert host_tree._templates is not None
    return host_tree._templates.address


def _new_hosts(tracked: Tracked, before: set[int]) -> set[int]:
    return set(children_of(tracked.template)) - before


def test_a_peer_with_the_wrong_key_gets_nothing(tracked: Tracked) -> None:
    """A same-user peer without the tree's key: refused in the handshake, its host gone."""
    before = set(children_of(tracked.template))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(_address())
    conn = Connection(sock.detach())
    try:
        with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
            wire.client_handshake(conn, b"not the key" * 3)
    finally:
        conn.close()
    for pid in _new_hosts(tracked, before):
        assert wait_gone(pid), f"host {pid} of a refused peer lingers"
    proxy = tracked.proxy()
    assert proxy.value == 42


def test_a_slow_peer_does_not_hold_up_others(tracked: Tracked) -> None:
    """A peer dribbling its handshake a byte at a time: others are served meanwhile."""
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(_address())
    try:
        for byte in b"\x00\x00\x00\x20#CHALL":
            slow.send(bytes([byte]))
            start = time.monotonic()
            proxy = tracked.proxy()
            np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
            assert time.monotonic() - start < 5.0  # far below the 10 s handshake deadline
            if len(tracked.proxies) >= 3:
                break
    finally:
        slow.close()


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
