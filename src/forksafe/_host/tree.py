"""A process tree's host template: where to find it, how to start it, and a host from it.

One template serves a process tree: its address is derived from the tree's
identity (``_forking.tree``: the first process that imported forksafe and a
secret only its fork descendants hold), so a pool's workers share it
whichever of them started it. A client trusts an address only after the
kernel says its listener runs as this user and the listener has proved it
holds the secret; an address held by anyone else is abandoned for a private
one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from typing import Any

from forksafe import _forking
from forksafe._errors import HostError, HostTimeoutError
from forksafe._host.client_start import start_detached
from forksafe._host.transport import sweep
from forksafe._host.wire import (
    checkpoint,
    client_handshake,
    decode,
    peer_of,
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
        config = {
            "address": address,
            "key": self.key,
            "anchor": self.anchor,
            "preload": list(_preload),
            # As this process resolves imports, without '' (the template's
            # own start-up never looks in the directory).
            "sys_path": [p or os.getcwd() for p in sys.path],
        }
        start_detached("template", config, timeout=timeout, what="the model host template")


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

    def __init__(self, loader: Callable[[], Any], preload: tuple[str, ...]) -> None:
        self.loader = loader
        self.preload = preload

    def open(self, timeout: float) -> tuple[Connection, int]:
        """A connection to a new host, and the host's pid."""
        templates = _tree_templates(self.preload)
        if not templates.lock.acquire(timeout=timeout):
            raise HostTimeoutError(f"waited {timeout} s for another thread starting a host")
        try:
            return templates.connect(timeout)
        finally:
            templates.lock.release()

    def first_request(self) -> tuple[Any, ...]:
        """What a new host is asked first: to load the model."""
        return ("load", self.loader)

    @staticmethod
    def abandon(conn: Connection, pid: int) -> None:
        """Stop a host nobody waits for any more."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        conn.close()
        sweep(pid)
