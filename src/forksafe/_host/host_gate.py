"""Host side: the template's gate: peers are authenticated before anything is done for them.

One thread runs every pending handshake at once on non-blocking sockets, so
a silent or slow peer stalls nobody, and a peer costs a socket and a few
bytes until it proves it holds the key (``wire.server_reply``) or its
``HANDSHAKE_SECONDS`` run out. At most ``MAX_PENDING`` handshakes wait; a
flood of connections pushes out the oldest, never an honest client that
answers at once. Only an authenticated peer gets a host forked for it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import selectors
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from forksafe._host.wire import HANDSHAKE_SECONDS, OPENING_SIZE, Peer, peer_of, server_reply

__all__ = ["MAX_PENDING", "Gate"]

MAX_PENDING = 256
_LENGTH = struct.Struct("!i")  # multiprocessing.connection's frame header
_LARGEST = 256  # no handshake message is longer


@dataclass
class _Pending:
    sock: socket.socket
    peer: Peer
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    expected: bytes | None = None  # the client proof, once our reply is sent


class Gate:
    """Accepts this user's connections on ``listener``; yields those that proved the key."""

    def __init__(self, listener: socket.socket, key: bytes) -> None:
        self.listener = listener
        self.key = key
        self.pending: dict[int, _Pending] = {}  # by fd, oldest first
        self.selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)

    def __iter__(self) -> Iterator[tuple[socket.socket, Peer]]:
        while True:
            now = time.monotonic()
            for fd in [fd for fd, p in self.pending.items() if p.deadline <= now]:
                self._drop(fd)
            soonest = min((p.deadline for p in self.pending.values()), default=now + 60)
            for selected, _ in self.selector.select(max(soonest - now, 0.0)):
                if selected.fileobj is self.listener:
                    self._accept()
                    continue
                done = self._advance(selected.fd)
                if done is not None:
                    yield done

    def close(self) -> None:
        """Close the listener and every pending connection (in a host forked from here)."""
        for fd in list(self.pending):
            self._drop(fd)
        self.selector.close()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:  # out of descriptors: make room, take the rest later
                if self.pending:
                    self._drop(next(iter(self.pending)))
                return
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            if peer.uid != os.getuid():
                sock.close()
                continue
            while len(self.pending) >= MAX_PENDING:
                self._drop(next(iter(self.pending)))
            sock.setblocking(False)
            deadline = time.monotonic() + HANDSHAKE_SECONDS
            self.pending[sock.fileno()] = _Pending(sock, peer, deadline)
            self.selector.register(sock, selectors.EVENT_READ)

    @staticmethod
    def _message(pending: _Pending) -> bytes:
        """The next frame, read exactly (never past it); ``BlockingIOError`` until it arrived.

        What the client sends after its proof (its stderr's descriptor, its
        first request) is the host's to read.
        """
        received = pending.received
        while True:
            if len(received) < _LENGTH.size:
                needed = _LENGTH.size - len(received)
            else:
                (size,) = _LENGTH.unpack_from(received)
                if not 0 <= size <= _LARGEST:
                    raise ValueError("not a handshake message")
                needed = _LENGTH.size + size - len(received)
                if needed == 0:
                    message = bytes(received[_LENGTH.size :])
                    received.clear()
                    return message
            data = pending.sock.recv(needed)  # BlockingIOError: nothing more yet
            if not data:
                raise EOFError
            received += data

    def _advance(self, fd: int) -> tuple[socket.socket, Peer] | None:
        """Read what ``fd`` sent and take the handshake a step; the peer once it proved the key."""
        pending = self.pending[fd]
        try:
            while True:
                message = self._message(pending)
                if pending.expected is None:
                    answer = server_reply(self.key, message, (os.getpid(), pending.peer.pid))
                    if answer is None or len(message) != OPENING_SIZE:
                        raise ValueError("not an opening")
                    reply, pending.expected = answer
                    frame = _LENGTH.pack(len(reply)) + reply
                    if pending.sock.send(frame) != len(frame):  # a fresh socket has room
                        raise OSError("short write")
                elif hmac.compare_digest(message, pending.expected):
                    del self.pending[fd]
                    self.selector.unregister(pending.sock)
                    pending.sock.setblocking(True)
                    return pending.sock, pending.peer
                else:
                    raise ValueError("wrong proof")
        except BlockingIOError:
            return None
        except (OSError, EOFError, ValueError):
            self._drop(fd)
        return None

    def _drop(self, fd: int) -> None:
        pending = self.pending.pop(fd, None)
        if pending is None:
            return
        with contextlib.suppress(Exception):
            self.selector.unregister(pending.sock)
        pending.sock.close()
