"""A model host: authenticate one client, load its model, answer its requests.

Runs in a process forked from the template. Its standard output and error
are the client's standard error (passed over the socket), so a progress bar
or a ``print`` in the model's code shows where the client's would. It exits
when its client closes the connection or dies (watched by a thread through
a pidfd where Linux has one, else by polling the pid), sweeping the dead
client's shared-memory segments, so a host never outlives the process it
serves.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError
from forksafe._frameworks import backend_of
from forksafe._host.transport import SegmentPool, gone, is_plain, sweep, to_plain, unpack
from forksafe._host.wire import (
    HANDSHAKE_SECONDS,
    Peer,
    encode,
    error_envelope,
    frame_id,
    recv_fd,
    server_handshake,
    set_timeouts,
    unpickle_request,
)

__all__ = ["attribute", "invoke", "model_meta", "plain_result", "serve", "take_output"]

_POLL = 1.0  # seconds between liveness checks where there is no pidfd


def _describe(value: Any) -> str:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    if isinstance(value, list | tuple | set | frozenset) and value:
        inner = sorted({type(item).__qualname__ for item in value if not is_plain(item)})
        return f"a {kind.__qualname__} of {', '.join(inner)}"
    return f"a {name}"


def model_meta(model: Any, owner: Any) -> dict[str, Any]:
    """What a host reports about the model it loaded."""
    kind = type(model)
    return {
        "backend": backend_of(model),
        "graph_mode": owner is not None,
        "type": f"{kind.__module__}.{kind.__qualname__}",
    }


def invoke(model: Any, owner: Any, name: str | None, args: Any, kwargs: Any) -> Any:
    """Call the model (``name`` None) or its method, inside its TF1 graph if it has one."""
    fn = model if name is None else getattr(model, name)
    return fn(*args, **kwargs) if owner is None else owner.call(fn, *args, **kwargs)


def attribute(model: Any, name: str) -> tuple[str, Any]:
    """``("callable", what the client shows of it)`` or ``("value", plain data)``."""
    value = getattr(model, name)
    if callable(value):
        doc = getattr(value, "__doc__", None)
        qualname = getattr(value, "__qualname__", None)
        return (
            "callable",
            {
                "doc": doc if isinstance(doc, str) else None,
                "qualname": qualname if isinstance(qualname, str) else name,
            },
        )
    value = to_plain(value)
    if not is_plain(value):
        raise HostError(
            f"attribute {name!r} of the model is {_describe(value)}, which cannot "
            "cross a process boundary; with the model in a host process only plain data "
            "attributes (numbers, strings, arrays, and lists/tuples/dicts of them) and "
            "method calls work"
        )
    return ("value", value)


def plain_result(result: Any, name: str | None) -> Any:
    """A call's result as plain data (tensors as arrays), or a HostError naming its type."""
    result = to_plain(result)
    if not is_plain(result):
        what = "calling the model" if name is None else f"{name}()"
        raise HostError(
            f"{what} returned {_describe(result)}, which cannot cross a process boundary "
            "(it ran in the host); a hosted model answers with plain data only: numbers, "
            "strings, arrays, and lists/tuples/dicts of them"
        )
    return result


class _Host:
    def __init__(self) -> None:
        self.model: Any = None
        self.owner: Any = None

    def handle(self, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "call":
            _, name, args, kwargs = request
            result = invoke(self.model, self.owner, name, unpack(args), unpack(kwargs))
            return plain_result(result, name)
        if op == "getattr":
            return attribute(self.model, request[1])
        if op == "setattr":
            setattr(self.model, request[1], unpack(request[2]))
            return None
        if op == "load":
            self.model, self.owner = request[1]()
            return model_meta(self.model, self.owner)
        if op == "ping":
            return os.getpid()
        raise HostError(f"unknown request {op!r}")


def _exit_when_client_dies(client_pid: int, pool: SegmentPool) -> None:
    # A thread, so that the serving loop blocks in recv with nothing to poll.
    try:
        pidfd = os.pidfd_open(client_pid)
    except (AttributeError, OSError):
        while not gone(client_pid):
            time.sleep(_POLL)
    else:
        select.select([pidfd], [], [])
    # Unlinking under the serving thread is safe: its mappings stay valid.
    pool.close()
    sweep(client_pid)  # a killed client's segments: nobody else would unlink them
    _flush()
    os._exit(0)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def take_output(fd: int | None) -> None:
    """Make ``fd`` (a client's stderr, a log; ``None``: nowhere) fd 1 and 2, line-buffered."""
    _flush()
    if fd is None:
        fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]


def _reply(conn: Connection, rid: int, status: str, payload: Any) -> None:
    try:
        data = encode(rid, (status, payload))
    except Exception as exc:  # checked plain, so unexpected; still an answer
        data = encode(rid, ("error", error_envelope(HostError(str(exc)), traceback.format_exc())))
    conn.send_bytes(data)


def serve(sock: socket.socket, client: Peer, key: bytes) -> None:
    """Authenticate the client on ``sock``, then answer it until it closes or dies."""
    sock.settimeout(None)
    set_timeouts(sock, HANDSHAKE_SECONDS)
    conn = Connection(sock.detach())
    try:
        server_handshake(conn, key)
        take_output(recv_fd(conn))
    except (OSError, EOFError, Exception):
        return  # an unauthenticated or vanished peer gets nothing more
    pool = SegmentPool()
    threading.Thread(target=_exit_when_client_dies, args=(client.pid, pool), daemon=True).start()
    host = _Host()
    try:
        conn.send_bytes(encode(0, ("hello", os.getpid())))
        set_timeouts(conn.fileno(), 0)  # an idle client may take its time
    except OSError:
        return
    try:
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                # A dying client's socket closes before it exits: if it died,
                # its segments are this host's to sweep (the watcher thread
                # may be a moment behind).
                if gone(client.pid, within=1.0):
                    sweep(client.pid)
                return
            pool.recycle()  # the client has read the previous reply
            rid = frame_id(frame)
            try:
                request = unpickle_request(frame)
            except Exception as exc:
                error = HostError(
                    f"the model host cannot unpickle the request ({type(exc).__name__}: {exc}); "
                    "a loader or factory must be importable by name (defined at module level "
                    "in a module other than __main__)"
                )
                _reply(conn, rid, "error", error_envelope(error, ""))
                continue
            try:
                status, payload = "ok", pool.pack(host.handle(request))
            except Exception as exc:
                pool.recycle()
                status, payload = "error", error_envelope(exc, traceback.format_exc())
            del request  # drop views of the request's arrays before the next one
            try:
                _reply(conn, rid, status, payload)
            except OSError:
                return
    finally:
        pool.close()
        _flush()
