"""Client side, private hosts: the process tree's template, and a host of one's own from it.

One template serves a process tree: its address is derived from the tree's
identity (``_forking.tree``: the first process that imported forksafe and a
secret only its fork descendants hold), so a pool's workers share it
whichever of them started it. A client trusts an address only after the
kernel says its listener runs as this user and the listener has proved it
holds the secret (``wire.client_handshake``); an address held by anyone else
is abandoned for a private one. Once authenticated, the template forks a
host for this client, which says hello with its pid, takes the client's
standard error and loads the model (the connection's first request).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from typing import Any

from forksafe import _forking
from forksafe._errors import HostCrashedError, HostError, HostTimeoutError
from forksafe._host.client_connect import NotOurs, connect, first_request
from forksafe._host.client_start import start_detached
from forksafe._host.shm import sweep
from forksafe._host.wire import (
    FIRST_RID,
    checkpoint,
    client_handshake,
    decode,
    peer_of,
    raise_envelope,
    send_fd,
    set_timeouts,
)

__all__ = ["TreeHost"]

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

    def connect(self, load: bytes, timeout: float) -> tuple[Connection, int]:
        """A new host of this tree's template, asked to run ``load``: its connection and pid."""
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        for _attempt in range(_ATTEMPTS):
            address = self.address
            try:
                sock = connect(address, deadline, what="the model host template")
            except (ConnectionRefusedError, FileNotFoundError):
                # Nobody serves it (yet, or any more).
                self._start(address, max(deadline - time.monotonic(), 0.001))
                continue
            except NotOurs as exc:
                problems.append(f"its address was held by uid {exc.uid}")
                self._abandon(address)
                continue
            try:
                server_pid = peer_of(sock).pid
                conn = Connection(sock.detach())
            finally:
                sock.close()
            try:
                set_timeouts(conn.fileno(), max(deadline - time.monotonic(), 0.001))
                checkpoint("client.handshake")
                client_handshake(conn, self.key, server_pid)
                # The host forked for us: our stderr, then the load, without waiting.
                send_fd(conn, _stderr())
                conn.send_bytes(load)
                _hello, pid = decode(conn.recv_bytes(), 0)
            except AuthenticationError:
                conn.close()
                problems.append("a process of this user that is not our template held its address")
                self._abandon(address)
                continue
            except BlockingIOError:
                conn.close()
                raise HostTimeoutError(
                    f"the model host template did not answer within {timeout} s"
                ) from None
            except (EOFError, OSError):  # the template left as we came: start another
                conn.close()
                problems.append("the template exited during the handshake")
                continue
            except BaseException:
                conn.close()
                raise
            return conn, int(pid)
        raise HostError(f"could not reach a model host template: {'; '.join(problems)}")

    def _abandon(self, address: str) -> None:
        # Never trust that address again, in this process or its fork children.
        if self.address == address:
            self.address = f"{address}-{secrets.token_hex(8)}"

    def _start(self, address: str, timeout: float) -> None:
        """Start a template at ``address``; it yields at once if a sibling got there first."""
        config = {
            "address": address,
            "key": self.key,
            "anchor": self.anchor,
            "preload": list(_preload),
            # As this process resolves imports, without '' (the template's
            # own start-up never looks in the directory).
            "sys_path": [p or os.getcwd() for p in sys.path],
        }
        start_detached("host_template", config, timeout=timeout, what="the model host template")


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


class TreeHost:
    """Opens a host of its own for one client: forked from the tree's template, then loaded.

    ``loader()`` runs in the host and returns ``(model, owner)``, where an
    owner (or ``None``) has ``call(fn, *args, **kwargs)`` that runs ``fn``
    in the model's TF1 graph and session.
    """

    owns_host = True  # retired by killing it: nobody else uses it

    def __init__(self, loader: Callable[[], Any], preload: tuple[str, ...], describe: str) -> None:
        self.loader = loader
        self.preload = preload
        self.describe = describe

    def open(self, timeout: float) -> tuple[Connection, int, dict[str, Any]]:
        """A connection to a new host that has loaded the model, its pid, and what it loaded."""
        try:
            load = first_request(("load", self.loader, self.describe))
        except Exception as exc:
            raise HostError(
                f"cannot send the loader to a model host: {type(exc).__name__}: {exc}; "
                "loaders and factories must be picklable (functions and classes defined at "
                "module level in an importable module)"
            ) from exc
        templates = _tree_templates(self.preload)
        if not templates.lock.acquire(timeout=timeout):
            raise HostTimeoutError(f"waited {timeout} s for another thread starting a host")
        try:
            conn, pid = templates.connect(load, timeout)
        finally:
            templates.lock.release()
        return conn, pid, self._loaded(conn, pid, timeout)

    @staticmethod
    def _loaded(conn: Connection, pid: int, timeout: float) -> dict[str, Any]:
        """The load's answer: what the host loaded, or its error (the host then stopped)."""
        try:
            set_timeouts(conn.fileno(), timeout)  # from now on, each wait of each call
            checkpoint("client.sent")
            status, payload = decode(conn.recv_bytes(), FIRST_RID)
        except BaseException as exc:
            TreeHost.abandon(conn, pid)
            if isinstance(exc, BlockingIOError):
                raise HostTimeoutError(
                    f"the model host (pid {pid}) did not load the model within {timeout} s; "
                    "it was stopped, and the next call starts a new one"
                ) from None
            if isinstance(exc, EOFError | OSError):
                raise HostCrashedError(
                    f"the model host process {pid} died during load (killed, out of memory, or "
                    "crashed); the next call starts a new host"
                ) from exc
            raise
        if status != "ok":
            TreeHost.abandon(conn, pid)  # a host without a model is of no use
            raise raise_envelope(payload, pid)
        meta: dict[str, Any] = payload
        return meta

    @staticmethod
    def abandon(conn: Connection, pid: int) -> None:
        """Stop a host nobody waits for any more."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        conn.close()
        sweep(pid)

    def release(self) -> None:
        """Nothing to do: each connection is a host of its own."""
