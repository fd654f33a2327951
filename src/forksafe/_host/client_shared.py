"""Client side, shared hosts: finding the host of a model, or starting the one that will be.

A shared host serves every process of this user that asks for the same model
in the same environment (``identity``). Its socket, start lock and log live
in the user's private runtime directory (``runtime_dir``), named by that
identity: only this user can reach a socket there, and the kernel confirms
the listener's uid at every connect. A process that finds no host takes the
start lock (``flock``, without waiting); the host it starts keeps that lock
for as long as it lives. So however many processes race, one host starts,
and one replacement after it dies. A client's identity is pinned while it
has a connection: its threads all reach one model, as an in-process worker
holds one, until its last connection ends (then a deploy is seen).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError, HostTimeoutError
from forksafe._host import identity
from forksafe._host.client_connect import NotOurs, connect, first_exchange, first_request
from forksafe._host.client_start import python, start_detached
from forksafe._host.runtime_dir import runtime_dir
from forksafe._host.wire import checkpoint, raise_envelope, set_timeouts

__all__ = ["GRACE_SECONDS", "SharedHost", "ask_stats"]

# A shared host exits this long after its last client left.
GRACE_SECONDS = 10.0
_POLL = 0.05  # between connects while another process starts the host
_STATS_SECONDS = 2.0


class _Stale(Exception):
    """The host at this identity found the model's files changed: compute it again."""


class SharedHost:
    """Opens connections to the one host of this user that serves a model in this environment.

    ``static`` is what never changes for this proxy (its source and batching,
    pickled); ``paths`` are the files that define the model, looked at again
    whenever the identity is computed.
    """

    owns_host = False  # others use it too: retiring a connection only closes it

    def __init__(
        self,
        loader: Callable[[], Any],
        *,
        static: bytes,
        paths: tuple[str, ...],
        describe: str,
        options: dict[str, Any],
    ) -> None:
        self.loader = loader
        self.static = static
        self.paths = paths
        self.describe = describe
        self.options = options
        self.modules = identity.modules_named(static)
        self.pinned: tuple[str, tuple[Any, ...]] | None = None  # (key, the files' identity)

    def _identity(self) -> tuple[str, tuple[Any, ...]]:
        if self.pinned is None:
            files = identity.files(self.paths)
            environment = identity.environment(python(), self.modules)
            self.pinned = (identity.key(self.static, files, environment), files)
        return self.pinned

    def paths_of(self, key: str) -> tuple[str, str, str]:
        """The host's socket, start lock and log."""
        base = os.path.join(runtime_dir(), key)
        return f"{base}.sock", f"{base}.lock", f"{base}.log"

    def release(self) -> None:
        """No connection left: the next one computes the identity anew (a deploy is seen)."""
        self.pinned = None

    def open(self, timeout: float) -> tuple[Connection, int, dict[str, Any]]:
        """A connection to the shared host (started if none lives), its pid and what it loaded."""
        deadline = time.monotonic() + timeout
        while True:
            key, files = self._identity()
            sock_path, _, log_path = self.paths_of(key)
            if deadline - time.monotonic() <= 0:
                raise HostTimeoutError(
                    f"the shared model host for {self.describe!r} did not answer within "
                    f"{timeout} s; its log: {log_path}"
                )
            try:
                return self._hello(sock_path, deadline, timeout)
            except (ConnectionRefusedError, FileNotFoundError):  # none lives, or not yet
                if not self._start(key, files, deadline, timeout):
                    time.sleep(_POLL)  # another process is starting it
            except _Stale:
                self.pinned = None  # the files changed: another identity, another host

    def _hello(
        self, path: str, deadline: float, timeout: float
    ) -> tuple[Connection, int, dict[str, Any]]:
        try:
            sock = connect(path, deadline, what=f"the shared model host for {self.describe!r}")
        except NotOurs as exc:
            raise HostError(f"the shared host's socket {path} is held by uid {exc.uid}") from None
        conn = Connection(sock.detach())
        try:
            checkpoint("client.handshake")
            # The hello waits for the model's load: bounded by what is left.
            status, payload = first_exchange(
                conn, first_request(("hello",)), max(deadline - time.monotonic(), 0.001)
            )
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
        if status != "ok":
            conn.close()
            if status == "stale":
                raise _Stale(payload)
            raise raise_envelope(payload, None)  # its load failed: the error is the answer
        set_timeouts(conn.fileno(), timeout)  # from now on, each wait of each call
        return conn, int(payload["pid"]), dict(payload["meta"])

    def _start(self, key: str, files: tuple[Any, ...], deadline: float, timeout: float) -> bool:
        """Start the host if no process holds the start lock; whether this one did."""
        sock_path, lock_path, log_path = self.paths_of(key)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
                "paths": self.paths,
                "files": files,  # what the host checks around its load
                "key": key,
                "grace_s": GRACE_SECONDS,
                "call_timeout_s": timeout,
                **self.options,
            }
            # The host inherits the locked descriptor and keeps it for life.
            start_detached(
                "host_shared",
                config,
                keep_fds=(lock,),
                timeout=max(deadline - time.monotonic(), 0.001),
                what=f"the shared model host for {self.describe!r}",
            )
            return True
        finally:
            os.close(lock)

    def stats(self) -> dict[str, Any] | None:
        """What this client's host reports about itself, or ``None`` if it does not answer."""
        if self.pinned is None:
            return None
        return ask_stats(self.paths_of(self.pinned[0])[0])

    @staticmethod
    def abandon(conn: Connection, pid: int) -> None:
        """A connection nobody waits for any more: closed (the host serves others)."""
        conn.close()


def ask_stats(path: str, timeout: float = _STATS_SECONDS) -> dict[str, Any] | None:
    """The figures of the shared host listening at ``path``, or ``None`` if none answers."""
    deadline = time.monotonic() + timeout
    try:
        sock = connect(path, deadline, what="a shared model host")
    except (OSError, HostTimeoutError):
        return None
    conn = Connection(sock.detach())
    with contextlib.closing(conn):
        try:
            status, payload = first_exchange(conn, first_request(("stats",)), timeout)
        except (OSError, EOFError, HostError):
            return None
    return dict(payload) if status == "ok" else None
