"""Both sides: what a client and its host agree on: credentials, handshake, frames, errors.

A frame is an 8-byte request id followed by a pickle. The host answers each
request once, echoing its id; a client that reads any other id, or is
interrupted anywhere in an exchange, retires the connection (see
``client.HostClient``), so no answer can ever reach a later call. Replies
are decoded with plain data admitted only (``plain.loads``).

The handshake with a template (which holds the process tree's key) is
mutual and cannot be reflected: each side sends a nonce, and each proof is
an HMAC over both nonces, both pids as the kernel reports them, and a label
saying which side made it. A peer without the key cannot get a proof from
one server to show another: servers make only server proofs, and each is
bound to the connection's own pids.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import io
import os
import pickle
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from typing import Any

from forksafe import _errors
from forksafe._errors import HostError
from forksafe._host import plain

__all__ = [
    "FIRST_RID",
    "HANDSHAKE_SECONDS",
    "OPENING_SIZE",
    "Peer",
    "checkpoint",
    "client_handshake",
    "command",
    "decode",
    "encode",
    "error_envelope",
    "frame_id",
    "peer_of",
    "proof",
    "raise_envelope",
    "recv_fd",
    "send_fd",
    "server_reply",
    "set_timeouts",
    "short_path",
    "unpickle_request",
]

# A connection that has not finished its handshake by then is dropped.
HANDSHAKE_SECONDS = 10.0
# The id of a connection's first request (its load, or its hello); replies echo ids.
FIRST_RID = 1
_CREDENTIALS = struct.Struct("3i")
_RID = struct.Struct("!Q")
_MAGIC = b"forksafe/2 "
_NONCE = 32
OPENING_SIZE = len(_MAGIC) + _NONCE
_PIDS = struct.Struct("!qq")
# Longest path bind() and connect() take in a sockaddr_un, with room to spare.
_SUN_PATH = 100
# How a template or a shared host program starts: ``python -I -c COMMAND``.
# ``-I`` ignores PYTHONPATH, so the directory forksafe was imported from is
# appended (last: it cannot shadow anything) for a forksafe that is not installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_COMMAND = "import sys; sys.path.append({root!r}); from forksafe._host.{module} import main; main()"


def command(module: str) -> str:
    """The ``-c`` program that runs ``forksafe._host.<module>.main()``."""
    return _COMMAND.format(root=_ROOT, module=module)


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


def proof(key: bytes, side: bytes, nonces: tuple[bytes, bytes], pids: tuple[int, int]) -> bytes:
    """The HMAC one side shows: over its label, both nonces and (server pid, client pid)."""
    message = b"forksafe " + side + b"\0" + nonces[0] + nonces[1] + _PIDS.pack(*pids)
    return hmac.new(key, message, hashlib.sha256).digest()


def server_reply(key: bytes, opening: bytes, pids: tuple[int, int]) -> tuple[bytes, bytes] | None:
    """A server's answer to a client's opening, and the client proof it then expects.

    ``pids`` are (this server's pid, the client's pid as the kernel reports
    it). ``None`` if the opening is not one.
    """
    if len(opening) != OPENING_SIZE or not opening.startswith(_MAGIC):
        return None
    client_nonce, server_nonce = opening[len(_MAGIC) :], secrets.token_bytes(_NONCE)
    reply = server_nonce + proof(key, b"server", (client_nonce, server_nonce), pids)
    return reply, proof(key, b"client", (server_nonce, client_nonce), pids)


def client_handshake(conn: Connection, key: bytes, server_pid: int) -> None:
    """The client's side: the server proves it holds ``key`` before the client proves it.

    ``server_pid`` is the listener's pid as the kernel reports it.

    Raises:
        AuthenticationError: the server's proof is wrong.
    """
    pids = (server_pid, os.getpid())
    client_nonce = secrets.token_bytes(_NONCE)
    conn.send_bytes(_MAGIC + client_nonce)
    reply = conn.recv_bytes(256)
    server_nonce, shown = reply[:_NONCE], reply[_NONCE:]
    expected = proof(key, b"server", (client_nonce, server_nonce), pids)
    if len(server_nonce) != _NONCE or not hmac.compare_digest(shown, expected):
        raise AuthenticationError("the server did not prove it holds this process tree's key")
    conn.send_bytes(proof(key, b"client", (server_nonce, client_nonce), pids))


@contextlib.contextmanager
def short_path(path: str) -> Iterator[str]:
    """An address for ``path`` that fits a Unix socket address (through ``/proc`` if long)."""
    if path.startswith("\0") or len(os.fsencode(path)) <= _SUN_PATH:
        yield path
        return
    directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)


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


def decode(frame: bytes, rid: int) -> Any:
    """The reply to request ``rid``, decoded with plain data admitted only."""
    got = frame_id(frame)
    if got != rid:
        raise HostError(f"the model host answered request {got} when {rid} was expected")
    stream = io.BytesIO(frame)  # shares the bytes (no copy) until written to
    stream.seek(_RID.size)
    return plain.loads(stream)


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
    elif module == "forksafe" and qualname in _errors.__all__:
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
