"""The client side of a model host: the tree's template, the connection, and ``RemoteModel``.

One template serves a process tree: its address is derived from the tree's
identity (``_forking.tree``: the first process that imported forksafe and a
secret only its fork descendants hold), so a pool's workers share it
whichever of them started it. A client trusts an address only after the
kernel says its listener runs as this user and the listener has proved it
holds the secret; an address held by anyone else is abandoned for a private
one. Each proxy has its own host per process; calls on one host are
serialised by a lock; every wait is bounded by the proxy's ``timeout``; an
exchange that is interrupted or fails in any way retires its host, so no
answer can reach a later call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from typing import Any

from forksafe import _forking
from forksafe._errors import ForkSafeError, HostCrashedError, HostError, HostTimeoutError
from forksafe._host.transport import SegmentPool, sweep, unpack
from forksafe._host.wire import (
    TEMPLATE_COMMAND,
    checkpoint,
    client_handshake,
    decode,
    encode,
    peer_of,
    raise_envelope,
    send_fd,
    set_timeouts,
)

__all__ = ["RemoteModel"]

_ATTEMPTS = 4  # connects per host start: a template may exit or lose a race meanwhile


def _tree_address(anchor: int, key: bytes) -> str:
    digest = hashlib.sha256(key).hexdigest()[:16]
    name = f"forksafe-{os.getuid()}-{anchor}-{digest}"
    if sys.platform.startswith("linux"):
        # An abstract address is no file: nothing is left behind however the
        # template ends. Anyone can bind a free one, hence the checks.
        return "\0" + name
    directory = os.path.join(tempfile.gettempdir(), f"forksafe-{os.getuid()}")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise HostError(f"{directory} is not a private directory of this user; remove it")
    return os.path.join(directory, f"{anchor}-{digest}.sock")


class _Templates:
    """Where this process finds its tree's template, and starting one when none answers."""

    def __init__(self) -> None:
        self.anchor, self.key = _forking.tree
        self.address = _tree_address(self.anchor, self.key)
        self.lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        self.lock = threading.Lock()  # it may have crossed the fork held

    def connect(self, timeout: float) -> tuple[Connection, int]:
        """An authenticated connection to a new host of this tree's template, and its pid."""
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        for _attempt in range(_ATTEMPTS):
            address = self.address
            remaining = max(deadline - time.monotonic(), 0.001)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(remaining)
                sock.connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                sock.close()
                self._start(address, remaining)  # nobody serves it (yet, or any more)
                continue
            except BaseException:
                sock.close()
                raise
            try:
                owner = peer_of(sock).uid
                if owner != os.getuid():
                    problems.append(f"its address was held by uid {owner}")
                    self._abandon(address)
                    continue
                sock.settimeout(None)
                set_timeouts(sock, remaining)
                conn = Connection(sock.detach())
            finally:
                sock.close()
            try:
                checkpoint("client.handshake")
                client_handshake(conn, self.key)
                send_fd(conn, _stderr())
                _hello, pid = decode(conn.recv_bytes(), 0)
                set_timeouts(conn.fileno(), timeout)  # from now on, each wait of each call
                return conn, int(pid)
            except AuthenticationError:
                conn.close()
                problems.append("a process of this user that is not our template held its address")
                self._abandon(address)
            except BlockingIOError:
                conn.close()
                raise HostTimeoutError(
                    f"the model host template did not answer within {timeout} s"
                ) from None
            except (EOFError, OSError):  # the template left as we came: start another
                conn.close()
                problems.append("the template exited during the handshake")
            except BaseException:
                conn.close()
                raise
        raise HostError(f"could not reach a model host template: {'; '.join(problems)}")

    def _abandon(self, address: str) -> None:
        # Never trust that address again, in this process or its fork children.
        if self.address == address:
            self.address = f"{address}-{secrets.token_hex(8)}"

    def _start(self, address: str, timeout: float) -> None:
        """Start a template at ``address``; it yields at once if a sibling got there first."""
        config_r, config_w = os.pipe()
        report_r, report_w = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", TEMPLATE_COMMAND, str(config_r), str(report_w)],
                stdin=subprocess.DEVNULL,
                pass_fds=(config_r, report_w),
            )
        finally:
            os.close(config_r)
            os.close(report_w)
        writer = Connection(config_w, readable=False)
        reader = Connection(report_r, writable=False)
        try:
            writer.send(
                {
                    "address": address,
                    "key": self.key,
                    "anchor": self.anchor,
                    "preload": list(_preload),
                    # As this process resolves imports, without '' (the
                    # template's own start-up never looks in the directory).
                    "sys_path": [p or os.getcwd() for p in sys.path],
                }
            )
            writer.close()
            process.wait(timeout)  # the first process exits as soon as the template detaches
            if not reader.poll(timeout):
                raise HostTimeoutError(f"the model host template did not start within {timeout} s")
            reader.recv()
        except subprocess.TimeoutExpired:
            raise HostTimeoutError(
                f"the model host template did not start within {timeout} s"
            ) from None
        finally:
            writer.close()
            reader.close()
            if process.returncode is None:
                process.kill()
                process.wait()


def _stderr() -> int | None:
    """This process's fd 2, where hosts should write, or ``None`` if it has none."""
    try:
        os.fstat(2)
    except OSError:
        return None
    return 2


_templates: _Templates | None = None
_templates_lock = threading.Lock()
_preload: tuple[str, ...] = ()  # what this process's templates import ahead of time


def _tree_templates(preload: tuple[str, ...]) -> _Templates:
    global _templates, _preload
    _preload = tuple(sorted({*_preload, *preload}))
    with _templates_lock:
        if _templates is None:
            _templates = _Templates()
            _forking.at_fork("host templates", after_in_child=_after_fork_in_child)
        return _templates


def _after_fork_in_child() -> None:
    global _templates_lock
    _templates_lock = threading.Lock()
    if _templates is not None:
        _templates.after_fork_in_child()


def _connect(templates: _Templates, timeout: float) -> tuple[Connection, int]:
    """``templates.connect`` run off this thread, so no signal handler can cut it short.

    Starting a host juggles sockets and descriptors; an exception raised by
    a signal handler between two of those steps would leak one. Signal
    handlers run only in the main thread, so the work runs in another while
    this one waits, interruptibly. A host that arrives after its caller was
    interrupted is stopped by the thread that made it.
    """
    box: dict[str, Any] = {}
    settled = threading.Lock()
    done = threading.Event()

    def run() -> None:
        try:
            if not templates.lock.acquire(timeout=timeout):
                raise HostTimeoutError(f"waited {timeout} s for another thread starting a host")
            try:
                box["result"] = templates.connect(timeout)
            finally:
                templates.lock.release()
        except BaseException as exc:
            box["error"] = exc
        with settled:
            done.set()
            if box.get("abandoned") and "result" in box:
                _abandon_host(*box["result"])

    threading.Thread(target=run, name="forksafe-host-start", daemon=True).start()
    try:
        # The thread's own waits are bounded by timeout (twice: the lock, the connect).
        if not done.wait(2 * timeout + 5.0):
            raise HostTimeoutError(f"a model host did not start within {2 * timeout} s")
    except BaseException:
        with settled:
            box["abandoned"] = True
            if done.is_set() and "result" in box:
                _abandon_host(*box["result"])
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _abandon_host(conn: Connection, pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    conn.close()
    sweep(pid)


def _close(conn: Connection, pool: SegmentPool) -> None:
    conn.close()
    pool.close()


class HostClient:
    """One host process serving one model for this process, and only this process."""

    def __init__(self, loader: Callable[[], Any], preload: tuple[str, ...], timeout: float) -> None:
        self.loader = loader
        self.preload = preload
        self.timeout = timeout
        self.pid = os.getpid()
        self.conn: Connection | None = None
        self.host_pid: int | None = None
        self.meta: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.pool = SegmentPool()
        self.rid = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def request(self, message: tuple[Any, ...], *, what: str) -> Any:
        """Send ``message`` to the host (starting one if needed) and return its answer."""
        if os.getpid() != self.pid:
            raise ForkSafeError(
                f"this connection to a model host belongs to process {self.pid}, and this is "
                f"process {os.getpid()}, forked from it; use the model through its forksafe "
                "proxy here (methods taken from the proxy follow it across a fork)"
            )
        if not self.lock.acquire(timeout=self.timeout):
            raise HostTimeoutError(
                f"waited {self.timeout} s for another thread's call to the model host"
            )
        try:
            if self.conn is None:
                self._start()
            return self._exchange(message, what=what)
        finally:
            self.lock.release()

    def _start(self) -> None:
        """Start a host from the tree's template and load the model there (lock held)."""
        conn, pid = _connect(_tree_templates(self.preload), self.timeout)
        self.conn, self.host_pid = conn, pid
        self._finalizer = weakref.finalize(self, _close, conn, self.pool)
        try:
            self.meta = self._exchange(("load", self.loader), what="load")
        except BaseException:
            self._retire(signal.SIGKILL)  # a host without a model is of no use
            raise

    def _exchange(self, message: tuple[Any, ...], *, what: str) -> Any:
        conn = self.conn
        assert conn is not None
        self.rid += 1
        rid = self.rid
        try:
            frame = encode(rid, self.pool.pack(message))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self.pool.recycle()  # nothing was sent: the host is still in step
            raise HostError(
                f"cannot send {what} to the model host: {type(exc).__name__}: {exc}; "
                "arguments, loaders and factories must be picklable (functions and "
                "classes defined at module level in an importable module)"
            ) from exc
        except BaseException:
            self.pool.recycle()
            raise
        try:
            checkpoint("client.send")
            conn.send_bytes(frame)
            checkpoint("client.sent")
            reply = conn.recv_bytes()
            checkpoint("client.received")
            status, payload = decode(reply, rid)
            if status == "ok":
                payload = unpack(payload)
        except BlockingIOError:  # a socket bound expired: the host is stuck
            pid = self._retire(signal.SIGKILL)
            raise HostTimeoutError(
                f"the model host (pid {pid}) did not answer {what} within {self.timeout} s; "
                "it was stopped, and the next call starts a new one"
            ) from None
        except (EOFError, OSError) as exc:
            pid = self._retire(signal.SIGKILL)
            raise HostCrashedError(
                f"the model host process {pid} died during {what} (killed, out of memory, or "
                "crashed); the next call starts a new host"
            ) from exc
        except BaseException:
            # Interrupted (KeyboardInterrupt, a signal handler's exception, a
            # timeout of the caller's) or anything else mid-exchange: this
            # connection may still owe an answer, so it is never used again.
            self._retire(signal.SIGKILL)
            raise
        finally:
            self.pool.recycle()  # the host has answered (or is gone): it is done with them
        if status == "ok":
            return payload
        raise raise_envelope(payload, self.host_pid)

    def _retire(self, sig: int | None) -> int | None:
        """Stop using this host for good; the next request starts another. Returns its pid."""
        pid, self.host_pid, self.conn = self.host_pid, None, None
        if pid is not None and sig is not None:  # before closing: it dies without a word
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if self._finalizer is not None:
            self._finalizer()
        if pid is not None:
            sweep(pid)
        return pid


class RemoteMethod:
    """A method of the model in the host; calling it is one round trip.

    Its ``__name__``, ``__qualname__`` and ``__doc__`` are the host method's.
    """

    def __init__(self, client: HostClient, name: str, about: dict[str, Any]) -> None:
        self._client = client
        self._name = name
        self.__name__ = name
        self.__qualname__ = about.get("qualname") or name
        self.__doc__ = about.get("doc")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", self._name, args, kwargs), what=self._name)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of the model in host pid {self._client.host_pid}>"


class RemoteModel:
    """Stands in for a model that lives in a host process.

    ``loader()`` runs in the host and returns ``(model, owner)``, where an
    owner (or ``None``) has ``call(fn, *args, **kwargs)`` that runs ``fn``
    in the model's TF1 graph and session.
    """

    __slots__ = ("__weakref__", "_client", "_describe", "_methods")

    def __init__(
        self,
        loader: Callable[[], Any],
        *,
        describe: str,
        preload: tuple[str, ...],
        timeout: float,
    ) -> None:
        self._client: HostClient
        self._methods: dict[str, RemoteMethod]
        self._describe: str
        object.__setattr__(self, "_client", HostClient(loader, preload, timeout))
        object.__setattr__(self, "_methods", {})
        object.__setattr__(self, "_describe", describe)
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
            method = self._methods[name] = RemoteMethod(self._client, name, value)
            return method
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        self._client.request(("setattr", name, value), what=f"setting {name!r}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", None, args, kwargs), what="__call__")

    def __repr__(self) -> str:
        return f"<forksafe remote model {self._describe!r} in host pid {self._client.host_pid}>"
