"""A template authenticates every peer before it forks anything for it, and cannot be reflected.

The peers here are same-user processes that do not hold the process tree's
key: they speak the real protocol (``forksafe._host.wire``) with guessed or
relayed proofs. The template must close them without a host; honest clients
meanwhile get theirs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
import pytest

from forksafe._host import client_private, wire
from tests.faults.conftest import Tracked
from tests.support.procs import children_of

pytestmark = pytest.mark.timeout(300)
NOT_THE_KEY = b"not the key" * 3


def _address() -> str:
    assert client_private._templates is not None, "no host was started in this process yet"
    return client_private._templates.address


def _peer() -> tuple[Connection, int]:
    """A raw connection to this tree's template, and the template's pid (as the kernel says)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(_address())
    wire.set_timeouts(sock, 10)
    server = wire.peer_of(sock).pid
    return Connection(sock.detach()), server


def _opening(conn: Connection, nonce: bytes) -> bytes:
    """Send an opening with ``nonce``; the server's reply (its nonce, then its proof)."""
    conn.send_bytes(b"forksafe/2 " + nonce)
    return conn.recv_bytes(256)


def _refused(conn: Connection) -> bool:
    """Whether the server hung up instead of serving (a host would say hello)."""
    try:
        conn.recv_bytes()
    except (EOFError, OSError):
        return True
    return False


def _no_new_hosts(tracked: Tracked, before: set[int]) -> None:
    time.sleep(0.5)  # a fork for the peer, had there been one, shows by now
    assert set(children_of(tracked.template)) - before <= tracked.live_hosts()


def test_a_peer_with_the_wrong_key_is_refused_by_the_template(tracked: Tracked) -> None:
    """A proof made with another key: the template hangs up, and forks no host for it."""
    before = set(children_of(tracked.template))
    conn, server = _peer()
    try:
        nonce = os.urandom(32)
        reply = _opening(conn, nonce)
        server_nonce = reply[:32]
        guess = wire.proof(NOT_THE_KEY, b"client", (server_nonce, nonce), (server, os.getpid()))
        conn.send_bytes(guess)
        assert _refused(conn)
    finally:
        conn.close()
    _no_new_hosts(tracked, before)
    assert tracked.proxy().value == 42  # honest clients are served as before


def test_a_peer_cannot_reflect_proofs_between_two_connections(tracked: Tracked) -> None:
    """Proofs relayed from a second connection, or sent back as they came: refused.

    The server proofs a peer can obtain are labelled as the server's and bound
    to their own connection's nonces and pids; none is the client proof the
    first connection asks for.
    """
    before = set(children_of(tracked.template))
    for relay in ("second connection's proof", "own proof back", "second proof of our nonce"):
        first, _ = _peer()
        second, _ = _peer()
        try:
            nonce = os.urandom(32)
            reply = _opening(first, nonce)
            server_nonce, shown = reply[:32], reply[32:]
            if relay == "own proof back":
                forged = shown
            else:
                # Ask the second connection to prove something over the first's nonce.
                asked = server_nonce if relay == "second connection's proof" else nonce
                forged = _opening(second, asked)[32:]
            first.send_bytes(forged)
            assert _refused(first), relay
        finally:
            first.close()
            second.close()
    _no_new_hosts(tracked, before)
    assert tracked.proxy().value == 42


def test_the_relay_that_fooled_the_first_protocol_gets_nothing(tracked: Tracked) -> None:
    """The attack that got a host before: answer a host's challenge with a second host.

    Protocol 1 used one HMAC for both directions and forked a host per
    connection before authenticating, so a second connection's host computed
    the answer to the first host's challenge (and the first said welcome).
    """
    before = set(children_of(tracked.template))
    first, _ = _peer()
    second, _ = _peer()
    try:
        first.send_bytes(b"#CHALLENGE#" + b"x" * 20)  # we never check its answer
        served = not _refused(first)
        if served:  # protocol 1: carry on as the attack did
            first.send_bytes(b"#WELCOME#")
            second.send_bytes(first.recv_bytes(256))
            first.send_bytes(second.recv_bytes(256))
            served = first.recv_bytes(256) == b"#WELCOME#"
        assert not served, "a peer without the key was welcomed"
    finally:
        first.close()
        second.close()
    _no_new_hosts(tracked, before)


def test_a_connect_flood_does_not_stop_honest_clients(tracked: Tracked) -> None:
    """Twice as many silent connections as the gate holds: honest hosts still start at once."""
    from forksafe._host.host_gate import MAX_PENDING

    before = set(children_of(tracked.template))
    silent: list[socket.socket] = []
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set() and len(silent) < 2 * MAX_PENDING:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(_address())
            silent.append(sock)

    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        for _ in range(3):
            start = time.monotonic()
            proxy = tracked.proxy()
            np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
            assert time.monotonic() - start < 30.0
    finally:
        stop.set()
        flooder.join(60)
        for sock in silent:
            sock.close()
    assert len(silent) > MAX_PENDING
    _no_new_hosts(tracked, before)


def test_a_slow_peer_does_not_hold_up_others(tracked: Tracked) -> None:
    """A peer dribbling its opening a byte at a time: others are served meanwhile."""
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(_address())
    try:
        for byte in b"\x00\x00\x00\x2bforksafe/2 ":
            slow.send(bytes([byte]))
            start = time.monotonic()
            proxy = tracked.proxy()
            np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
            assert time.monotonic() - start < 5.0  # far below the 10 s handshake deadline
            if len(tracked.proxies) >= 3:
                break
    finally:
        slow.close()
