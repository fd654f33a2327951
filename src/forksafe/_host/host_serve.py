"""Host side: the one serve loop, and accepting this user's connections.

``serve`` answers a connection's requests until it closes: each frame is
decoded (the host trusts its client: a full unpickle), answered by
``respond`` (which never raises: it returns ``("ok", value)`` or ``("error",
envelope)``), and replied under the request's id, large arrays through the
connection's own shared-memory pool. The private host calls its answerer
inline; the shared host hands each request to its model's thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError
from forksafe._host.shm import SegmentPool, unpack
from forksafe._host.wire import (
    Peer,
    encode,
    error_envelope,
    frame_id,
    peer_of,
    unpickle_request,
)

__all__ = ["Respond", "accepted", "flush", "serve", "take_output"]

# ``respond(request)`` -> ("ok", value) or ("error", envelope); never raises.
Respond = Callable[[tuple[Any, ...]], tuple[str, Any]]


def accepted(listener: socket.socket) -> Iterator[tuple[socket.socket, Peer]]:
    """Accepted connections of this user, with their credentials; others are closed at once.

    Never waits for a peer to speak: what it says is for whoever serves it.
    """
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:  # EMFILE and the like: do not spin
            time.sleep(0.05)
            continue
        try:
            peer = peer_of(sock)
        except OSError:
            sock.close()
            continue
        if peer.uid != os.getuid():
            sock.close()
            continue
        yield sock, peer


def _unreadable(exc: Exception) -> tuple[str, Any]:
    error = HostError(
        f"the model host cannot unpickle the request ({type(exc).__name__}: {exc}); "
        "a loader, factory or argument must be importable by name (defined at module "
        "level in a module other than __main__)"
    )
    return "error", error_envelope(error, "")


def serve(conn: Connection, respond: Respond) -> None:
    """Answer ``conn``'s requests with ``respond`` until the client closes it (or dies).

    Raises:
        EOFError, OSError: the connection ended (the caller decides what that means).
    """
    pool = SegmentPool()
    try:
        while True:
            frame = conn.recv_bytes()
            pool.recycle()  # the client has read the previous reply
            rid = frame_id(frame)
            try:
                request = unpickle_request(frame)
            except Exception as exc:
                status, payload = _unreadable(exc)
            else:
                try:
                    request = unpack(request)
                except HostError as exc:
                    status, payload = "error", error_envelope(exc, "")
                else:
                    status, payload = respond(request)
                del request  # drop views of the request's arrays before the next one
            try:
                data = encode(rid, (status, pool.pack(payload) if status == "ok" else payload))
            except Exception as exc:  # checked plain, so unexpected; still an answer
                pool.recycle()
                envelope = error_envelope(HostError(str(exc)), traceback.format_exc())
                data = encode(rid, ("error", envelope))
            conn.send_bytes(data)
    finally:
        pool.close()


def flush() -> None:
    """Flush Python's standard streams (before exiting, or redirecting them)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def take_output(fd: int | None) -> None:
    """Make ``fd`` (a client's stderr, a log; ``None``: nowhere) fd 1 and 2, line-buffered."""
    flush()
    if fd is None:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
