"""What a client and its host agree on: credentials, handshake, numbered frames, decoding.

A frame is an 8-byte request id followed by a pickle. The host answers each
request once, echoing its id; a client that reads any other id, or is
interrupted anywhere in an exchange, retires the connection (see
``client.HostClient``), so no answer can ever reach a later call.

Replies are decoded by ``decode``, which admits plain data only: builtin
scalars and containers, numpy arrays and scalars, forksafe's shared-array
references. Anything else a host sends (a model's object, a pickle that
would run code) is refused, so a host is a decode boundary: code that runs
in the host does not run in the client through its answers.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from forksafe import _errors
from forksafe._errors import HostError

__all__ = [
    "HANDSHAKE_SECONDS",
    "Peer",
    "checkpoint",
    "client_handshake",
    "decode",
    "encode",
    "error_envelope",
    "peer_of",
    "peers",
    "raise_envelope",
    "recv_fd",
    "send_fd",
    "server_handshake",
    "set_timeouts",
]

# A connection that has not finished its handshake by then is dropped.
HANDSHAKE_SECONDS = 10.0
_CREDENTIALS = struct.Struct("3i")
_RID = struct.Struct("!Q")

# Named steps of an exchange where the fault-injection tests interrupt or
# kill; empty (one dict truth test per step) outside those tests.
_faults: dict[str, Callable[[], None]] = {}


def checkpoint(step: str) -> None:
    """Mark a step of an exchange (a fault-injection point; does nothing otherwise)."""
    if _faults:
        fault = _faults.get(step)
        if fault is not None:
            fault()


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a Unix socket, as the kernel reports it."""

    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """The peer's credentials: of the connecting process, or of the listening one."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    return Peer(*_CREDENTIALS.unpack(raw))


def set_timeouts(sock: socket.socket | int, seconds: float) -> None:
    """Bound every blocking read and write on a socket's descriptor (0 removes the bound).

    Works below ``Connection``, which uses the raw descriptor: an expired
    bound surfaces as ``BlockingIOError``.
    """
    if isinstance(sock, int):
        with socket.socket(fileno=os.dup(sock)) as dup:
            set_timeouts(dup, seconds)
        return
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def peers(listener: socket.socket) -> Iterator[tuple[socket.socket, Peer]]:
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


def client_handshake(conn: Connection, key: bytes) -> None:
    """The server proves it holds ``key`` before the client answers anything."""
    deliver_challenge(conn, key)
    answer_challenge(conn, key)


def server_handshake(conn: Connection, key: bytes) -> None:
    """The server's side of ``client_handshake``."""
    answer_challenge(conn, key)
    deliver_challenge(conn, key)


def send_fd(conn: Connection, fd: int | None) -> None:
    """Pass ``fd`` (or no descriptor) to the peer, as one byte with ancillary data."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        socket.send_fds(sock, [b"1" if fd is not None else b"0"], [fd] if fd is not None else [])


def recv_fd(conn: Connection) -> int | None:
    """Receive what ``send_fd`` sent: a descriptor of this process, or ``None``."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
    if not data:
        raise EOFError("the peer closed the connection during the handshake")
    return fds[0] if fds else None


def encode(rid: int, message: Any) -> bytes:
    """One frame: the request id, then the pickled message."""
    return _RID.pack(rid) + pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def frame_id(frame: bytes) -> int:
    """The request id a frame carries."""
    return int(_RID.unpack_from(frame)[0])


def unpickle_request(frame: bytes) -> Any:
    """A request, decoded in full: the host trusts its authenticated client."""
    return pickle.loads(memoryview(frame)[_RID.size :])


# What a reply may contain besides pickle's own types: plain data only.
_ALLOWED = frozenset(
    {
        ("builtins", "complex"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        ("forksafe._host.transport", "Shared"),
    }
)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise HostError(
            f"the model host sent a {module}.{name}, which forksafe does not decode: a host "
            "answers with plain data only (numbers, strings, numpy arrays, and lists, tuples "
            "and dicts of them)"
        )


def decode(frame: bytes, rid: int) -> Any:
    """The reply to request ``rid``, decoded with plain data admitted only."""
    got = frame_id(frame)
    if got != rid:
        raise HostError(f"the model host answered request {got} when {rid} was expected")
    stream = io.BytesIO(frame)  # shares the bytes (no copy) until written to
    stream.seek(_RID.size)
    return _PlainUnpickler(stream).load()


def _builtin_base(kind: type[BaseException]) -> str:
    for cls in kind.__mro__:
        if cls.__module__ == "builtins":
            return cls.__name__
    return "Exception"


def _plain_args(args: tuple[Any, ...]) -> bool:
    return all(isinstance(a, str | int | float | bool | bytes | type(None)) for a in args)


def error_envelope(exc: BaseException, text: str) -> tuple[Any, ...]:
    """An exception as plain data: its class's name, nearest builtin base, args and traceback."""
    kind = type(exc)
    args = exc.args if _plain_args(exc.args) else None
    return (kind.__module__, kind.__qualname__, _builtin_base(kind), args, str(exc), text)


def raise_envelope(envelope: tuple[Any, ...], host_pid: int | None) -> BaseException:
    """The exception an envelope describes, rebuilt without importing anything the host named.

    Builtin exceptions and forksafe's own come back as themselves; any other
    comes back as its nearest builtin base, its message prefixed by its
    class's name. The host's traceback is attached as a note.
    """
    module, qualname, base, args, message, text = envelope
    cls: Any = None
    exact = False
    if module == "builtins":
        cls = getattr(builtins, qualname, None)
        exact = True
    elif module == "forksafe._errors" and qualname in _errors.__all__:
        cls = getattr(_errors, qualname)
        exact = True
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        cls, exact = getattr(builtins, base, Exception), False
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = Exception
    try:
        if exact and args is not None:
            exc = cls(*args)
        else:
            exc = cls(message if exact else f"{module}.{qualname}: {message}")
    except Exception:
        exc = HostError(f"{module}.{qualname}: {message}")
    exc.add_note(f"(raised in forksafe model host process {host_pid})\n{text}")
    return exc  # type: ignore[no-any-return]
