"""Host side, private hosts: the template: imports frameworks, never runs them, forks hosts.

Started by exec with ``python -I`` (never a fork of a client, whose runtime
may be dead; isolated, so nothing in the working directory or the
environment runs in it) and given the client's ``sys.path`` explicitly. One
template serves a whole process tree (a pool's parent and all its workers):
it listens on an address derived from the tree's identity, and whichever
process binds it first serves; a process that loses the race connects to
the winner. Its gate (``host_gate``) authenticates every peer without
waiting on any, and only then forks a host for it (``host_private``). A
thread reaps hosts and sweeps what they (and their dead clients) left in
shared memory; the reaper survives any error. The template exits once the
tree's first process is gone and it has no hosts left.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import select
import socket
import sys
import threading
import time
import traceback
import warnings
from multiprocessing.connection import Connection
from typing import Any

from forksafe._frameworks import FRAMEWORKS
from forksafe._host.host_gate import Gate
from forksafe._host.host_private import serve_client
from forksafe._host.host_serve import flush
from forksafe._host.shm import gone, sweep
from forksafe._host.wire import command

__all__ = ["main"]

_hosts: dict[int, int] = {}  # host pid -> its client's pid
_hosts_changed = threading.Event()
# Held around every fork and every change to ``_hosts``: a host must never
# inherit a lock (an import lock, say) that another thread held.
_fork_lock = threading.Lock()
_last_change = time.monotonic()
# Once the tree's first process is gone, the template leaves after this long
# without hosts: a sibling may be connecting right now.
_GRACE = 2.0
# A whole pool may connect at once; the kernel caps this at net.core.somaxconn.
_BACKLOG = 4096


def _watch_anchor(anchor: int) -> None:
    try:
        pidfd = os.pidfd_open(anchor)
    except ProcessLookupError:
        pass
    except (AttributeError, OSError):
        while not gone(anchor):
            time.sleep(1.0)
    else:
        select.select([pidfd], [], [])
    while True:
        with _fork_lock:  # no fork under way while this holds
            if not _hosts and time.monotonic() - _last_change > _GRACE:
                os._exit(0)
        time.sleep(_GRACE / 4)


def _reap_hosts() -> None:
    global _last_change
    while True:
        try:
            pid, _status = os.waitpid(-1, 0)  # holds no lock while it blocks
        except ChildProcessError:  # no host right now: wait for the next fork
            _hosts_changed.wait()
            _hosts_changed.clear()
            continue
        # Under the lock, error report included: a host forked meanwhile must
        # not inherit a lock (stderr's, say) that this thread holds.
        with _fork_lock:
            try:
                _last_change = time.monotonic()
                client = _hosts.pop(pid, None)
                sweep(pid)
                if client is not None and gone(client):
                    sweep(client)
            except Exception:  # the reaper must never die: report and go on
                with contextlib.suppress(Exception):
                    traceback.print_exc()


def _serve_forever(listener: socket.socket, key: bytes) -> None:
    global _last_change
    gate = Gate(listener, key)
    for sock, peer in gate:
        with _fork_lock:
            child = os.fork()
            if child == 0:
                _become_host(gate, sock, peer)
            _hosts[child] = peer.pid
            _last_change = time.monotonic()
        sock.close()
        _hosts_changed.set()


def _become_host(gate: Gate, sock: socket.socket, peer: Any) -> None:
    code = 1
    try:
        gate.close()  # the listener and the other peers are the template's
        serve_client(sock, peer)
        code = 0
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        flush()
        os._exit(code)


def _bind(address: str) -> socket.socket | None:
    """A listening socket at ``address``, or ``None`` if another process holds it."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
    except OSError:
        listener.close()
        return None
    listener.listen(_BACKLOG)
    return listener


def _preload(modules: list[str]) -> None:
    for name in modules:
        # A framework that fails to import here fails again, with its
        # message, in the host that needs it.
        with contextlib.suppress(Exception):
            importlib.import_module(name)


def _runtime_started() -> list[str]:
    return [f.name for f in FRAMEWORKS if f.started() or f.orphaned()]


def _reexec_without_preload(listener: socket.socket, config: dict[str, Any]) -> None:
    """Become a fresh template that imports nothing, keeping the listening socket.

    Importing a framework started its runtime, so forks of this process would hang.
    """
    read_fd, write_fd = os.pipe()
    fd = listener.fileno()
    os.set_inheritable(fd, True)
    os.set_inheritable(read_fd, True)
    writer = Connection(write_fd, readable=False)
    writer.send({**config, "preload": [], "listen_fd": fd})
    writer.close()
    os.execv(
        sys.executable, [sys.executable, "-I", "-c", command("host_template"), str(read_fd), "-1"]
    )


def main() -> None:
    """Entry point: read the config, bind (or yield to the winner), report, then fork hosts."""
    # No thread holds a lock while another forks here; Python 3.12+ would
    # still warn about every such fork.
    warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
    config_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    reader = Connection(config_fd, writable=False)
    config: dict[str, Any] = reader.recv()
    reader.close()
    if report_fd >= 0:
        # Detach: the creator reaps this first process at once, and the
        # template, in a session of its own, gets no terminal's Ctrl-C and
        # outlives its creator for the creator's siblings.
        if os.fork():
            os._exit(0)
        os.setsid()
    os.dup2(2, 1)  # whatever a framework prints goes to the creator's stderr
    sys.path[:] = config["sys_path"]
    listen_fd = config.get("listen_fd")
    if listen_fd is not None:
        listener: socket.socket | None = socket.socket(fileno=listen_fd)
    else:
        listener = _bind(config["address"])
    if report_fd >= 0:
        writer = Connection(report_fd, readable=False)
        writer.send({"pid": os.getpid(), "bound": listener is not None})
        writer.close()
    if listener is None:
        return  # another process of the tree serves this address
    _preload(config["preload"])
    if config["preload"] and _runtime_started():
        _reexec_without_preload(listener, config)
    threading.Thread(target=_watch_anchor, args=(config["anchor"],), daemon=True).start()
    threading.Thread(target=_reap_hosts, daemon=True).start()
    _serve_forever(listener, config["key"])
