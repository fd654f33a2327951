"""Host side, shared hosts: one model serving every process of this user that asks for it.

Started by a client with ``python -I`` (``client_start``), it detaches into a
session of its own, keeps the start lock its starter took (so no second
host can start while it lives), binds its socket in the user's private
runtime directory, and accepts connections at once: clients that come while
the model loads wait for its hello, bounded by their own timeout. It checks
the model's files before and after loading against the identity it was
started for; a file replaced meanwhile makes it answer ``stale`` (clients
then look for the host of the new identity) and leave. Each connection has
a thread that reads its requests (``host_serve``); one thread runs the
model (``host_batching.Batcher``). A call running longer than
``call_timeout`` ends the host (its clients see ``HostCrashedError``; the
next call starts one replacement). Its output goes to a log file beside its
socket. It exits ``grace`` seconds after its last client left, or on
SIGTERM (``forksafe hosts stop``), leaving no socket or lock behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError
from forksafe._host import identity
from forksafe._host.host_answer import Answerer
from forksafe._host.host_batching import Batcher
from forksafe._host.host_serve import accepted, serve, take_output
from forksafe._host.shm import gone, sweep
from forksafe._host.wire import Peer, error_envelope, set_timeouts, short_path

__all__ = ["main"]

# What the model's thread answers (host_answer.Answerer); the rest is this process's.
_MODEL_OPS = frozenset({"call", "getattr", "setattr", "delattr", "dir", "signature"})
_FAILED_LOAD_LINGER = 1.0  # seconds a host whose load failed answers with the error
_BACKLOG = 4096  # a whole pool may connect at once (the kernel caps it at somaxconn)


class _Hub:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.grace = float(config["grace_s"])
        self.call_timeout = float(config["call_timeout_s"])
        self.answerer = Answerer()
        self.batcher = Batcher(
            self.answerer,
            int(config["max_batch"]),
            float(config["max_wait_ms"]),
            lambda: self.clients,
        )
        self.clients = 0
        self.lock = threading.Lock()
        self.last_change = time.monotonic()
        self.started = time.monotonic()
        self.loaded = threading.Event()
        self.loading_since: float | None = None
        self.meta: dict[str, Any] = {}
        self.refusal: tuple[str, Any] | None = None  # ("error", envelope) or ("stale", why)

    # -- the model ---------------------------------------------------------------

    def load(self) -> None:
        """Load the model, checking its files around the load; then let clients in."""
        config = self.config
        self.loading_since = time.monotonic()  # the watchdog bounds the load too
        try:
            if identity.files(config["paths"]) != config["files"]:
                self.refusal = ("stale", "the model's files changed before the host loaded them")
                return
            self.meta = {
                **self.answerer.load(config["loader"], repr(config["describe"])),
                "log": config["log"],
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait * 1e3,
            }
            if identity.files(config["paths"]) != config["files"]:
                self.refusal = ("stale", "the model's files changed while the host loaded them")
        except Exception as exc:
            self.refusal = ("error", error_envelope(exc, traceback.format_exc()))
        finally:
            self.loading_since = None
            with self.lock:
                self.last_change = time.monotonic()
            self.loaded.set()

    def stats(self) -> dict[str, Any]:
        """What ``forksafe hosts`` shows of this host."""
        config = self.config
        return {
            "pid": os.getpid(),
            "source": config["describe"],
            "key": config["key"],
            "python": sys.executable,
            "environment": {
                name: value
                for name, value in os.environ.items()
                if name in ("KERAS_BACKEND", "TF_USE_LEGACY_KERAS", "CUDA_VISIBLE_DEVICES")
            },
            "backend": self.meta.get("backend"),
            "state": "loading"
            if not self.loaded.is_set()
            else self.refusal[0]
            if self.refusal
            else "serving",
            "clients": self.clients,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "pss_kb": _pss_kb(),
            "log": config["log"],
            "max_batch": self.batcher.max_batch,
            "max_wait_ms": self.batcher.max_wait * 1e3,
            **self.batcher.stats(),
        }

    def _state(self) -> str:
        if not self.loaded.is_set():
            return "loading"
        return self.refusal[0] if self.refusal is not None else "serving"

    # -- one thread per connection -----------------------------------------------

    def respond(self, request: tuple[Any, ...]) -> tuple[str, Any]:
        """The answer to one request of a client connection (never raises)."""
        op = request[0]
        if op == "stats":
            return "ok", self.stats()
        if not self.loaded.wait(self.call_timeout * 2 + 5.0):
            error = HostError(f"the shared host did not load within {self.call_timeout} s")
            return "error", error_envelope(error, "")
        if self.refusal is not None:
            return self.refusal
        if op == "hello":
            return "ok", {"pid": os.getpid(), "meta": self.meta}
        if op not in _MODEL_OPS:
            return "error", error_envelope(HostError(f"unknown request {op!r}"), "")
        call = self.batcher.submit(request)
        # Bounded twice over: the watchdog ends this process once a call runs
        # past call_timeout; this wait covers the queue in front of it too.
        if not call.done.wait(self.call_timeout * 2 + 5.0):
            error = HostError(
                f"the shared host did not get to this call within {self.call_timeout} s"
            )
            return "error", error_envelope(error, "")
        return call.result

    def serve_client(self, sock: socket.socket, peer: Peer) -> None:
        """Serve one connection; it counts as a client once it said hello."""
        sock.settimeout(None)
        set_timeouts(sock, 0)  # an idle client may take its time
        conn = Connection(sock.detach())
        counted = False

        def respond(request: tuple[Any, ...]) -> tuple[str, Any]:
            nonlocal counted
            answer = self.respond(request)
            if request[0] == "hello" and answer[0] == "ok" and not counted:
                counted = True
                self._count(+1)
            return answer

        try:
            serve(conn, respond)
        except (EOFError, OSError):
            pass
        finally:
            conn.close()
            if counted:
                self._count(-1)
            if gone(peer.pid, within=1.0):
                sweep(peer.pid)  # a killed client's segments: nobody else would unlink them

    def _count(self, change: int) -> None:
        with self.lock:
            self.clients += change
            self.last_change = time.monotonic()

    # -- lifetime ----------------------------------------------------------------

    def watch(self) -> None:
        while True:
            time.sleep(min(0.2, self.grace / 4))
            since = self.batcher.running_since or self.loading_since
            if since is not None and time.monotonic() - since > self.call_timeout:
                print(
                    f"forksafe shared host {os.getpid()}: a call ran for more than "
                    f"{self.call_timeout} s; exiting so that a new host takes over",
                    file=sys.stderr,
                    flush=True,
                )
                self.leave(1)
            with self.lock:
                idle = (
                    self.loaded.is_set()
                    and self.clients == 0
                    and time.monotonic() - self.last_change > self.grace
                )
            if idle:
                self.leave(0)

    def leave(self, code: int) -> None:
        """Exit, leaving no socket or lock file behind (the log stays for reading).

        The socket goes first: a starter that then takes a new lock file finds
        no socket of ours to connect to. One that had opened the old lock file
        sees it gone once it holds it, and tries again (``client_shared``).
        """
        for path in (self.config["socket"], self.config["lock"]):
            with contextlib.suppress(OSError):
                os.unlink(path)
        sweep(os.getpid())
        os._exit(code)


def _pss_kb() -> int | None:
    """This process's proportional set size (shared pages split among their users), KiB."""
    try:
        with open("/proc/self/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):  # a dead host's: we hold the start lock
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with short_path(path) as reachable:
        listener.bind(reachable)
    os.chmod(path, 0o600)
    listener.listen(_BACKLOG)
    return listener


def main() -> None:
    """Entry point: read the config, detach, bind, report, serve at once, load."""
    config_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    reader = Connection(config_fd, writable=False)
    config: dict[str, Any] = reader.recv()
    reader.close()
    if os.fork():  # the starter reaps this first process at once
        os._exit(0)
    os.setsid()
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
    take_output(os.open(config["log"], flags, 0o600))
    sys.path[:] = config["sys_path"]
    listener = _listen(config["socket"])
    writer = Connection(report_fd, readable=False)
    writer.send({"pid": os.getpid()})
    writer.close()
    hub = _Hub(config)
    # `kill PID` stops a host cleanly: its clients see it gone, as after a crash.
    # Blocked in every thread and awaited here, so it is never delivered to a
    # thread that cannot act on it (a Python handler runs only in this one).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=hub.watch, name="forksafe-shared-watch", daemon=True).start()
    threading.Thread(target=_accept, args=(hub, listener), daemon=True).start()
    threading.Thread(target=_model, args=(hub,), name="forksafe-shared-model", daemon=True).start()
    signal.sigwait({signal.SIGTERM})
    hub.leave(0)


def _model(hub: _Hub) -> None:
    """The model's thread: load, then run calls for ever."""
    print(f"forksafe shared host {os.getpid()}: loading {hub.config['describe']}", flush=True)
    hub.load()
    if hub.refusal is not None:
        # Not cached: whoever connects now gets the refusal, and the next use
        # after that starts a host that tries again (or the new identity's).
        print(f"forksafe shared host {os.getpid()}: not serving ({hub.refusal[0]})", flush=True)
        threading.Timer(_FAILED_LOAD_LINGER, hub.leave, (1,)).start()
    hub.batcher.run_forever()


def _accept(hub: _Hub, listener: socket.socket) -> None:
    for sock, peer in accepted(listener):
        threading.Thread(
            target=hub.serve_client, args=(sock, peer), name="forksafe-shared-client", daemon=True
        ).start()
