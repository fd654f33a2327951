"""Finding the shared host of a source, or starting the one that will be.

A shared host (``hub``) serves every process of this user that asks for the
same source and options. Its socket, start lock and log live in the user's
private runtime directory (``$XDG_RUNTIME_DIR/forksafe``, else
``forksafe-<uid>`` in the temp directory; mode 0700, checked), named by a
digest of the source and options: only this user can reach a socket there,
and the kernel confirms the listener's uid at every connect. A process that
finds no host takes the start lock (``flock``, without waiting); the host it
starts keeps that lock for as long as it lives. So however many processes
race, one host starts, and one replacement after it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError, HostTimeoutError
from forksafe._host.client_start import start_detached
from forksafe._host.wire import (
    checkpoint,
    decode,
    peer_of,
    set_timeouts,
)

__all__ = ["GRACE_SECONDS", "SharedHost", "runtime_dir"]

# A shared host exits this long after its last client left.
GRACE_SECONDS = 10.0
_POLL = 0.05  # between connects while another process starts the host


def runtime_dir() -> str:
    """This user's private directory for shared hosts' sockets, locks and logs."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base) and os.stat(base).st_uid == os.getuid():
        directory = os.path.join(base, "forksafe")
    else:
        directory = os.path.join(tempfile.gettempdir(), f"forksafe-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if info.st_uid != os.getuid() or (info.st_mode & 0o777) != 0o700 or os.path.islink(directory):
        raise HostError(
            f"{directory} must be a directory of this user's with mode 0700 (it holds the "
            "shared hosts' sockets); remove it and forksafe makes a new one"
        )
    return directory


class SharedHost:
    """Opens a connection to the one host of this user that serves ``key``."""

    owns_host = False  # others use it too: retiring a connection only closes it

    def __init__(
        self, loader: Callable[[], Any], *, key: str, describe: str, options: dict[str, Any]
    ) -> None:
        self.loader = loader
        self.key = key
        self.describe = describe
        self.options = options

    def paths(self) -> tuple[str, str, str]:
        """The host's socket, start lock and log."""
        base = os.path.join(runtime_dir(), self.key)
        return f"{base}.sock", f"{base}.lock", f"{base}.log"

    def open(self, timeout: float) -> tuple[Connection, int]:
        """A connection to the shared host (started if none lives), and the host's pid."""
        sock_path, lock_path, log_path = self.paths()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostTimeoutError(
                    f"the shared model host for {self.describe!r} did not answer within "
                    f"{timeout} s; its log: {log_path}"
                )
            try:
                return self._connect(sock_path, remaining, timeout)
            except (ConnectionRefusedError, FileNotFoundError):  # none lives, or not yet
                if not self._start(lock_path, sock_path, log_path, remaining):
                    time.sleep(_POLL)  # another process is starting it

    def _connect(self, path: str, remaining: float, timeout: float) -> tuple[Connection, int]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(remaining)
            sock.connect(path)
            owner = peer_of(sock).uid
            if owner != os.getuid():
                raise HostError(f"the shared host's socket {path} is held by uid {owner}")
            sock.settimeout(None)
            set_timeouts(sock, remaining)  # the hello waits for the model's load
            conn = Connection(sock.detach())
        finally:
            sock.close()
        try:
            checkpoint("client.handshake")
            _hello, pid = decode(conn.recv_bytes(), 0)
            set_timeouts(conn.fileno(), timeout)  # from now on, each wait of each call
            return conn, int(pid)
        except BlockingIOError:
            conn.close()
            raise HostTimeoutError(
                f"the shared model host for {self.describe!r} did not answer within {timeout} s"
            ) from None
        except (EOFError, OSError):  # it exited as we came: the loop starts another
            conn.close()
            raise ConnectionRefusedError(path) from None
        except BaseException:
            conn.close()
            raise

    def _start(self, lock_path: str, sock_path: str, log_path: str, timeout: float) -> bool:
        """Start the host if no process holds the start lock; whether this one did."""
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live host holds it, or another process is starting one
            checkpoint("shared.locked")
            try:
                current = os.stat(lock_path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(lock).st_ino:
                return False  # a host that left unlinked this file: take the new one
            try:
                loader = pickle.dumps(self.loader, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise HostError(
                    f"cannot send the loader of {self.describe!r} to a shared host: "
                    f"{type(exc).__name__}: {exc}; loaders and factories must be picklable "
                    "(functions and classes defined at module level in an importable module)"
                ) from exc
            config = {
                "socket": sock_path,
                "lock": lock_path,
                "log": log_path,
                "describe": self.describe,
                "loader": loader,  # unpickled there once sys.path is the client's
                "sys_path": [p or os.getcwd() for p in sys.path],
                "grace_s": GRACE_SECONDS,
                "call_timeout_s": timeout,
                **self.options,
            }
            # The host inherits the locked descriptor and keeps it for life.
            start_detached(
                "hub",
                config,
                keep_fds=(lock,),
                timeout=timeout,
                what=f"the shared model host for {self.describe!r}",
            )
            return True
        finally:
            os.close(lock)

    def first_request(self) -> tuple[Any, ...]:
        """What a new connection asks first: what the host loaded (it loads on its own)."""
        return ("meta",)

    @staticmethod
    def abandon(conn: Connection, pid: int) -> None:
        """A connection nobody waits for any more: closed (the host serves others)."""
        conn.close()
