"""The template process: imports the framework, never runs it, forks model hosts.

Started by exec (never a fork of the client, whose runtime may be dead), it
imports the frameworks the client uses, checks that doing so started no
runtime, and listens on a Unix socket (an abstract one on Linux, else one in
a private directory). Every authenticated connection is handed to a freshly
forked host that serves it: a host costs a fork, not a framework import. A
thread reaps every host that ends and sweeps the shared-memory segments it
left. The template exits when the last process holding its stdin pipe (its
creator and the creator's fork children) is gone.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile
import threading
import warnings
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge
from typing import Any

from forksafe._transport import sweep

__all__ = ["authenticate", "main", "set_timeouts"]

_SO_PEERCRED_FORMAT = "3i"


def set_timeouts(sock: socket.socket, seconds: float) -> None:
    """Bound every blocking read and write on ``sock``'s descriptor (0 removes the bound).

    Works below ``Connection``, which uses the raw descriptor: an expired
    bound surfaces as ``BlockingIOError``.
    """
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def authenticate(conn: Connection, authkey: bytes, *, server: bool) -> None:
    """Mutual HMAC challenge, as ``multiprocessing.connection.Listener`` does it."""
    if server:
        deliver_challenge(conn, authkey)
        answer_challenge(conn, authkey)
    else:
        answer_challenge(conn, authkey)
        deliver_challenge(conn, authkey)


def _preload(modules: list[str]) -> list[str]:
    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a missing optional framework is not fatal
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    return errors


def _watch_creator(directory: str | None) -> None:
    # Raw os.read: no Python-level lock is held while blocked, so forking
    # hosts while this thread waits is safe.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)


def _listen() -> tuple[socket.socket, str, str | None]:
    """A listening socket, its address, and the directory to remove at exit (if any)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if sys.platform.startswith("linux"):
        # An abstract address is no file: nothing is left behind however the
        # template ends, SIGKILL included. Peers are checked by uid and HMAC.
        directory = None
        address = f"\0forksafe-{os.getpid()}-{secrets.token_hex(8)}"
    else:
        directory = tempfile.mkdtemp(prefix="forksafe-")
        os.chmod(directory, 0o700)
        address = os.path.join(directory, "template.sock")
    listener.bind(address)
    listener.listen(64)
    return listener, address, directory


_host_forked = threading.Event()
# Held around every fork and every sweep: a host must never inherit a lock
# (the resource tracker's, an import lock) that the sweeping thread held.
_fork_lock = threading.Lock()


def _reap_hosts() -> None:
    # However a host ended (killed too), its pooled segments are swept here;
    # hosts share this process's resource tracker, so it stays balanced.
    while True:
        try:
            pid, _status = os.waitpid(-1, 0)  # holds no lock while it blocks
        except ChildProcessError:  # no host right now: wait for the next fork
            _host_forked.wait()
            _host_forked.clear()
            continue
        with _fork_lock:
            sweep(pid)


def _serve_forever(listener: socket.socket, authkey: bytes) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except InterruptedError:
            continue
        try:
            pid, uid, _gid = struct.unpack(
                _SO_PEERCRED_FORMAT,
                sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FORMAT)
                ),
            )
            if uid != os.getuid():
                raise PermissionError("peer is another user")
            set_timeouts(sock, 10.0)
        except Exception:
            sock.close()
            continue
        conn = Connection(sock.detach())
        try:
            authenticate(conn, authkey, server=True)
        except Exception:  # a client that fails the handshake gets nothing
            conn.close()
            continue
        with _fork_lock:
            child = os.fork()
        if child == 0:
            _become_host(listener, conn, pid)
        _host_forked.set()
        conn.close()


def _become_host(listener: socket.socket, conn: Connection, client_pid: int) -> None:
    code = 1
    try:
        listener.close()
        os.close(0)
        # The handshake bound is on the socket, shared by every descriptor of it.
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        set_timeouts(sock, 0)
        sock.close()
        from forksafe._host import serve

        serve(conn, client_pid)
        code = 0
    finally:
        os._exit(code)


def main() -> None:
    """Entry point: read the config from stdin, report on stdout, then fork hosts."""
    # The watcher thread holds no lock while it waits, so forking hosts beside
    # it is safe; Python 3.12+ would warn about every such fork.
    warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
    reader = Connection(os.dup(0), writable=False)
    config: dict[str, Any] = reader.recv()
    reader.close()
    sys.path[:] = config["sys_path"]
    errors = _preload(config["preload"])
    import forksafe

    clean = not any(b.started or b.inherited for b in forksafe.runtime_state().backends)
    resource_tracker.ensure_running()  # hosts share it instead of each starting one
    listener, address, directory = _listen()
    writer = Connection(os.dup(1), readable=False)
    writer.send({"address": address, "pid": os.getpid(), "clean": clean, "errors": errors})
    writer.close()
    threading.Thread(target=_watch_creator, args=(directory,), daemon=True).start()
    threading.Thread(target=_reap_hosts, daemon=True).start()
    _serve_forever(listener, config["authkey"])
