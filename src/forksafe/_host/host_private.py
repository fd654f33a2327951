"""Host side, private hosts: a host forked from the template for one authenticated client.

It says hello with its pid, takes the client's standard error as its own
(passed over the socket), so a progress bar or a ``print`` in the model's
code shows where the client's would, then answers the client's requests,
the first of which loads the model. It exits when its client closes the
connection or dies (watched by a thread through a pidfd where Linux has
one, else by polling the pid), sweeping the dead client's shared-memory
segments, so a host never outlives the process it serves.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from forksafe._host.host_answer import Answerer
from forksafe._host.host_serve import flush, serve, take_output
from forksafe._host.shm import gone, sweep
from forksafe._host.wire import (
    HANDSHAKE_SECONDS,
    Peer,
    encode,
    error_envelope,
    recv_fd,
    set_timeouts,
)

__all__ = ["serve_client"]

_POLL = 1.0  # seconds between liveness checks where there is no pidfd


def _exit_when_client_dies(client_pid: int) -> None:
    # A thread, so that the serving loop blocks in recv with nothing to poll.
    try:
        pidfd = os.pidfd_open(client_pid)
    except (AttributeError, OSError):
        while not gone(client_pid):
            time.sleep(_POLL)
    else:
        select.select([pidfd], [], [])
    # Unlinking under the serving thread is safe: its mappings stay valid.
    sweep(os.getpid())
    sweep(client_pid)  # a killed client's segments: nobody else would unlink them
    flush()
    os._exit(0)


def _respond(answerer: Answerer) -> Any:
    def respond(request: tuple[Any, ...]) -> tuple[str, Any]:
        try:
            return "ok", answerer.answer(request)
        except Exception as exc:
            return "error", error_envelope(exc, traceback.format_exc())

    return respond


def serve_client(sock: socket.socket, client: Peer) -> None:
    """Serve the authenticated client on ``sock`` until it closes or dies."""
    sock.settimeout(None)
    set_timeouts(sock, HANDSHAKE_SECONDS)
    conn = Connection(sock.detach())
    try:
        conn.send_bytes(encode(0, ("hello", os.getpid())))
        take_output(recv_fd(conn))
        set_timeouts(conn.fileno(), 0)  # an idle client may take its time
    except (OSError, EOFError):
        return  # it left before it was served
    threading.Thread(target=_exit_when_client_dies, args=(client.pid,), daemon=True).start()
    try:
        serve(conn, _respond(Answerer()))
    except (EOFError, OSError):
        # A dying client's socket closes before it exits: if it died, its
        # segments are this host's to sweep (the watcher may be a moment behind).
        if gone(client.pid, within=1.0):
            sweep(client.pid)
    finally:
        flush()
