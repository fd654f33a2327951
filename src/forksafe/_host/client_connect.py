"""Client side: the one way to reach a template or a shared host, bounded, never a raw OS error.

``connect`` waits (within the caller's deadline) while a listener's backlog
is full, as it is when a whole pool starts at once, and confirms with the
kernel that the listener runs as this user. ``first_exchange`` sends a new
connection's first request and reads its answer with the same bound.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostTimeoutError
from forksafe._host.wire import (
    FIRST_RID,
    decode,
    encode,
    peer_of,
    set_timeouts,
    short_path,
)

__all__ = ["NotOurs", "connect", "first_exchange", "first_request"]

_BUSY = (errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.EINPROGRESS)


class NotOurs(OSError):
    """The listener at the address runs as another user."""

    def __init__(self, address: str, uid: int) -> None:
        super().__init__(f"the listener at {address!r} runs as uid {uid}")
        self.uid = uid


def connect(address: str, deadline: float, *, what: str) -> socket.socket:
    """A connected socket to ``address`` whose listener is this user's, by ``deadline``.

    Raises:
        ConnectionRefusedError, FileNotFoundError: nobody listens there (the
            caller may start a listener).
        NotOurs: another user's process listens there.
        HostTimeoutError: the listener's backlog stayed full until the deadline.
    """
    pause = 0.002
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HostTimeoutError(f"{what} accepted no connection in time (its queue was full)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Blocking with a bound: the kernel waits for room in a full backlog.
            set_timeouts(sock, remaining)
            with short_path(address) as reachable:
                sock.connect(reachable)
        except OSError as exc:
            sock.close()
            if exc.errno not in _BUSY or isinstance(exc, ConnectionRefusedError):
                raise
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 0.1)
            continue
        except BaseException:
            sock.close()
            raise
        try:
            owner = peer_of(sock).uid
        except BaseException:
            sock.close()
            raise
        if owner != os.getuid():
            sock.close()
            raise NotOurs(address, owner)
        return sock


def first_exchange(conn: Connection, request: bytes, timeout: float) -> tuple[str, Any]:
    """Send a new connection's first request (already encoded) and return its answer.

    The answer is ``(status, payload)`` as a host replies; every wait is
    bounded by ``timeout`` (from now on, each wait of each call).
    """
    set_timeouts(conn.fileno(), timeout)
    conn.send_bytes(request)
    status, payload = decode(conn.recv_bytes(), FIRST_RID)
    return str(status), payload


def first_request(message: tuple[Any, ...]) -> bytes:
    """``message`` encoded as a connection's first request."""
    return encode(FIRST_RID, message)
