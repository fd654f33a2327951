"""The client side of a model host: the template, the connection, and ``RemoteModel``.

One template per process tree: the process that first needs a host starts
it by exec; its fork children reuse it through its address and key (never
through a connection), so their hosts cost a fork. Each proxy has its own
host per process. Calls on one host are serialised by a lock; every wait is
bounded by the proxy's ``timeout``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import threading
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostCrashedError, HostError, HostTimeoutError
from forksafe._frameworks import PRELOADABLE
from forksafe._source import Source
from forksafe._template import authenticate, set_timeouts
from forksafe._transport import SegmentPool, sweep, unpack

__all__ = ["HostClient", "RemoteModel", "frameworks_to_preload"]


@dataclass
class _Template:
    address: str
    authkey: bytes
    pid: int
    process: subprocess.Popen[bytes]
    creator: int  # only this pid may wait on ``process``; fork children share the address

    def alive(self) -> bool:
        if self.creator == os.getpid():
            return self.process.poll() is None
        # A fork child cannot wait on it: a refused connection tells, and renews.
        return True

    def retire(self) -> None:
        """Close the template's stdin (it exits on EOF) and reap it, bounded."""
        if self.creator != os.getpid():
            return
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_template: _Template | None = None
_template_lock = threading.Lock()
_template_lock_pid = os.getpid()


def frameworks_to_preload(source: Source) -> tuple[str, ...]:
    """The frameworks this process uses, plus the default loader's: what hosts will need."""
    wanted = {name for name in PRELOADABLE if name in sys.modules}
    if source.path is not None and source.loader is None:
        from forksafe._source import legacy_keras

        wanted.add("tf_keras" if legacy_keras() else "keras")
    return tuple(sorted(wanted))


def _start_template(preload: tuple[str, ...], timeout: float) -> _Template:
    authkey = secrets.token_bytes(32)
    process = subprocess.Popen(
        [sys.executable, "-c", "from forksafe._template import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        writer = Connection(os.dup(process.stdin.fileno()), readable=False)
        writer.send({"authkey": authkey, "preload": list(preload), "sys_path": sys.path})
        writer.close()
        reader = Connection(os.dup(process.stdout.fileno()), writable=False)
        try:
            if not reader.poll(timeout):
                raise HostTimeoutError(f"the model host template did not start within {timeout} s")
            report = reader.recv()
        finally:
            reader.close()
    except BaseException:
        process.kill()
        process.wait()
        process.stdin.close()
        process.stdout.close()
        raise
    process.stdout.close()
    if not report["clean"]:
        # Importing a framework started its runtime: forks of this template
        # would hang. Use one that imports nothing (hosts import for themselves).
        process.kill()
        process.wait()
        process.stdin.close()
        return _start_template((), timeout) if preload else _fail(report)
    return _Template(report["address"], authkey, report["pid"], process, os.getpid())


@atexit.register
def _retire_at_exit() -> None:
    if _template is not None:
        _template.retire()


def _fail(report: dict[str, Any]) -> _Template:
    raise HostError(f"the model host template could not start cleanly: {report['errors']}")


def _template_for(preload: tuple[str, ...], timeout: float, *, renew: bool) -> _Template:
    global _template, _template_lock, _template_lock_pid
    if _template_lock_pid != os.getpid():  # the lock may have crossed a fork held
        _template_lock, _template_lock_pid = threading.Lock(), os.getpid()
    if not _template_lock.acquire(timeout=timeout):
        raise HostTimeoutError(f"waited {timeout} s for another thread starting the host template")
    try:
        # A live template is kept even if it did not preload what this source
        # needs: its hosts then import it themselves, slower but correct.
        current = _template
        if current is None or renew or not current.alive():
            if current is not None:
                current.retire()
            current = _template = _start_template(preload, timeout)
        return current
    finally:
        _template_lock.release()


def _connect(template: _Template, timeout: float) -> tuple[Connection, int]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(template.address)
        sock.settimeout(None)
        set_timeouts(sock, timeout)
    except BaseException:
        sock.close()
        raise
    conn = Connection(sock.detach())
    try:
        authenticate(conn, template.authkey, server=False)
        _hello, pid = conn.recv()
    except BaseException:
        conn.close()
        raise
    # The handshake's bound stays on the socket: every read of every call is
    # bounded by it, with no poll per call.
    return conn, int(pid)


def _close(conn: Connection, pool: SegmentPool) -> None:
    conn.close()
    pool.close()


class HostClient:
    """One host process serving one model for this process."""

    def __init__(self, source: Source, timeout: float) -> None:
        self.source = source
        self.timeout = timeout
        self.conn: Connection | None = None
        self.host_pid: int | None = None
        self.meta: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.pool = SegmentPool()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def start(self) -> None:
        """Start a host from the template and load the model there (lock held)."""
        preload = frameworks_to_preload(self.source)
        try:
            conn, pid = _connect(_template_for(preload, self.timeout, renew=False), self.timeout)
        except OSError:  # the template is gone (its creator exited): start a new one
            conn, pid = _connect(_template_for(preload, self.timeout, renew=True), self.timeout)
        self.conn, self.host_pid = conn, pid
        self._finalizer = weakref.finalize(self, _close, conn, self.pool)
        try:
            self.meta = self._exchange(("load", self.source), what="load")
        except BaseException:
            self._stop(None)  # a host without a model is of no use
            raise

    def request(self, message: tuple[Any, ...], *, what: str) -> Any:
        """Send ``message`` to the host (starting one if needed) and return its answer."""
        if not self.lock.acquire(timeout=self.timeout):
            raise HostTimeoutError(
                f"waited {self.timeout} s for another thread's call to the model host"
            )
        try:
            if self.conn is None:
                self.start()
            return self._exchange(message, what=what)
        finally:
            self.lock.release()

    def _exchange(self, message: tuple[Any, ...], *, what: str) -> Any:
        conn = self.conn
        assert conn is not None
        try:
            packed = self.pool.pack(message)
            try:
                data = pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise HostError(
                    f"cannot send {what} to the model host: {type(exc).__name__}: {exc}; "
                    "arguments, loaders and factories must be picklable (functions and "
                    "classes defined at module level in an importable module)"
                ) from exc
            conn.send_bytes(data)
            status, payload, text = pickle.loads(conn.recv_bytes())
        except BlockingIOError:  # a socket timeout expired: the host is stuck
            pid = self.host_pid
            self._stop(signal.SIGKILL)
            raise HostTimeoutError(
                f"the model host (pid {pid}) did not answer {what} within {self.timeout} s; "
                "it was stopped, and the next call starts a new one"
            ) from None
        except (EOFError, OSError) as exc:
            pid = self.host_pid
            self._stop(None)
            raise HostCrashedError(
                f"the model host process {pid} died during {what} (killed, out of memory, or "
                "crashed); the next call starts a new host"
            ) from exc
        finally:
            self.pool.recycle()  # the host has answered (or is gone): it is done with them
        if status == "ok":
            return unpack(payload)
        if hasattr(payload, "add_note"):
            payload.add_note(f"(raised in forksafe model host process {self.host_pid})\n{text}")
        raise payload

    def _stop(self, sig: int | None) -> None:
        pid, self.host_pid = self.host_pid, None
        if self._finalizer is not None:
            self._finalizer()
        self.conn = None
        if pid is not None:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            sweep(pid)


class RemoteMethod:
    """A method of the model in the host; calling it is one round trip."""

    __slots__ = ("_client", "_name")

    def __init__(self, client: HostClient, name: str) -> None:
        self._client = client
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", self._name, args, kwargs), what=self._name)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of the model in host pid {self._client.host_pid}>"


class RemoteModel:
    """Stands in for a model that lives in a host process."""

    __slots__ = ("__weakref__", "_client", "_methods")

    def __init__(self, source: Source, timeout: float) -> None:
        self._client: HostClient
        self._methods: dict[str, RemoteMethod]
        object.__setattr__(self, "_client", HostClient(source, timeout))
        object.__setattr__(self, "_methods", {})
        self._client.request(("ping",), what="start")

    @property
    def host_pid(self) -> int | None:
        """The host's pid, or ``None`` between a crash and the next call."""
        return self._client.host_pid

    @property
    def meta(self) -> dict[str, Any]:
        """What the host reported when it loaded the model."""
        return self._client.meta

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # private and special names stay on this side
            raise AttributeError(f"{name!r} is not forwarded to the model host")
        method = self._methods.get(name)
        if method is not None:
            return method
        kind, value = self._client.request(("getattr", name), what=f"attribute {name!r}")
        if kind == "callable":
            method = self._methods[name] = RemoteMethod(self._client, name)
            return method
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self._client.request(("setattr", name, value), what=f"setting {name!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", None, args, kwargs), what="__call__")

    def __repr__(self) -> str:
        return (
            f"<forksafe remote model {self._client.source.describe()!r} in host pid "
            f"{self._client.host_pid}>"
        )
