"""A shared host: one model serving every process of this user that asks for it.

Started by a client with ``python -I`` (``client_start``)
(isolated, the client's ``sys.path`` given explicitly), it detaches into a
session of its own, keeps the start lock its starter took (so no second
host can start while it lives), binds its socket in the user's private
runtime directory, loads the model and serves. Each client connection has a
thread that reads its requests; one thread runs the model. Concurrent calls
that can be joined (``batching``) run as one, up to ``max_batch`` rows,
waiting at most ``max_wait_ms`` for company. A call running longer than
``call_timeout`` ends the host (its clients see ``HostCrashedError``; the
next call starts one replacement). The host's output goes to a log file
beside its socket. It exits ``grace`` seconds after its last client left.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError
from forksafe._host.batching import batch_key, join, split
from forksafe._host.server import attribute, invoke, model_meta, plain_result, take_output
from forksafe._host.transport import SegmentPool, gone, sweep, unpack
from forksafe._host.wire import (
    HANDSHAKE_SECONDS,
    Peer,
    encode,
    error_envelope,
    frame_id,
    peers,
    set_timeouts,
    unpickle_request,
)

__all__ = ["main"]

_FAILED_LOAD_LINGER = 1.0  # seconds a host whose load failed answers with the error


@dataclass
class _Call:
    """One request of one client, waiting for the model."""

    op: str
    name: str | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    key: Any = None  # what it may be joined with; None: it runs alone
    rows: int = 0
    result: tuple[str, Any] = ("error", None)
    done: threading.Event = field(default_factory=threading.Event)


class _Hub:
    def __init__(self, config: dict[str, Any]) -> None:
        self.max_batch = int(config["max_batch"])
        self.max_wait = float(config["max_wait_ms"]) / 1e3
        self.grace = float(config["grace_s"])
        self.call_timeout = float(config["call_timeout_s"])
        self.log = str(config["log"])
        # Unlinked on the way out, while this host still holds the start lock.
        self.files = (str(config["socket"]), str(config["lock"]))
        self.calls: queue.Queue[_Call] = queue.Queue()
        self.held: deque[_Call] = deque()
        self.clients = 0
        self.lock = threading.Lock()
        self.last_change = time.monotonic()
        self.running_since: float | None = None
        self.model: Any = None
        self.owner: Any = None
        self.meta: dict[str, Any] = {}
        self.load_error: tuple[Any, ...] | None = None
        self.loaded = False

    # -- the model's thread ---------------------------------------------------

    def load(self, loader: Any) -> None:
        self.running_since = time.monotonic()  # the watchdog bounds the load too
        try:
            self.model, self.owner = pickle.loads(loader)()
        except Exception as exc:
            self.load_error = error_envelope(exc, traceback.format_exc())
        else:
            self.meta = {
                **model_meta(self.model, self.owner),
                "log": self.log,
                "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait * 1e3,
            }
        finally:
            self.running_since = None
            with self.lock:
                self.loaded = True
                self.last_change = time.monotonic()

    def _next(self) -> _Call:
        return self.held.popleft() if self.held else self.calls.get()

    def run_forever(self) -> None:
        while True:
            first = self._next()
            batch = [first]
            try:
                if first.key is not None:
                    self._gather(batch)
                self._run(batch)
            except BaseException as exc:  # this thread must not die: its callers would wait
                envelope = error_envelope(exc, traceback.format_exc())
                for call in batch:
                    call.result = ("error", envelope)
                    call.done.set()

    def _gather(self, batch: list[_Call]) -> None:
        """Join calls of the same key to ``batch``, up to max_batch rows, waiting a little.

        Calls already waiting are always looked at; ``max_wait_ms`` is how long
        to wait for more. Calls that do not fit keep their order for later.
        """
        rows = batch[0].rows
        deadline = time.monotonic() + self.max_wait
        held, self.held = list(self.held), deque()
        skipped_held: list[_Call] = []
        skipped_new: list[_Call] = []
        # Each client has at most one call in flight: with every client in the
        # batch already, no company can come.
        while rows < self.max_batch and len(batch) < self.clients:
            if held:
                call, skipped = held.pop(0), skipped_held
            else:
                remaining = deadline - time.monotonic()
                try:
                    call = (
                        self.calls.get(timeout=remaining)
                        if remaining > 0
                        else self.calls.get_nowait()
                    )
                except queue.Empty:
                    break
                skipped = skipped_new
            if call.key == batch[0].key and rows + call.rows <= self.max_batch:
                batch.append(call)
                rows += call.rows
            else:
                skipped.append(call)
        self.held = deque([*skipped_held, *held, *skipped_new])

    def _run(self, batch: list[_Call]) -> None:
        self.running_since = time.monotonic()
        try:
            if len(batch) > 1 and self._run_joined(batch):
                return
            for call in batch:
                self._run_one(call)
        finally:
            self.running_since = None
            for call in batch:
                call.done.set()

    def _run_joined(self, batch: list[_Call]) -> bool:
        first = batch[0]
        try:
            joined = invoke(
                self.model,
                self.owner,
                first.name,
                (join([c.args[0] for c in batch]),),
                first.kwargs,
            )
            pieces = split(plain_result(joined, first.name), [c.rows for c in batch])
        except Exception:  # each call on its own then: each gets its own answer or error
            return False
        if pieces is None:
            return False
        for call, piece in zip(batch, pieces, strict=True):
            call.result = ("ok", piece)
        return True

    def _run_one(self, call: _Call) -> None:
        try:
            if call.op == "call":
                result = invoke(self.model, self.owner, call.name, call.args, call.kwargs)
                value = plain_result(result, call.name)
            elif call.op == "getattr":
                value = attribute(self.model, call.name or "")
            else:  # setattr
                setattr(self.model, call.name or "", call.args[0])
                value = None
            call.result = ("ok", value)
        except Exception as exc:
            call.result = ("error", error_envelope(exc, traceback.format_exc()))

    # -- one thread per client -------------------------------------------------

    def serve_client(self, sock: socket.socket, peer: Peer) -> None:
        with self.lock:
            self.clients += 1
            self.last_change = time.monotonic()
        pool = SegmentPool()
        try:
            self._converse(sock, pool)
        except (EOFError, OSError):
            pass
        finally:
            pool.close()
            with self.lock:
                self.clients -= 1
                self.last_change = time.monotonic()
            if gone(peer.pid, within=1.0):
                sweep(peer.pid)  # a killed client's segments: nobody else would unlink them

    def _converse(self, sock: socket.socket, pool: SegmentPool) -> None:
        sock.settimeout(None)
        set_timeouts(sock, HANDSHAKE_SECONDS)
        conn = Connection(sock.detach())
        try:
            conn.send_bytes(encode(0, ("hello", os.getpid())))
            set_timeouts(conn.fileno(), 0)  # an idle client may take its time
            while True:
                frame = conn.recv_bytes()
                pool.recycle()  # the client has read the previous reply
                rid = frame_id(frame)
                status, payload = self._answer(frame)
                try:
                    packed = pool.pack(payload) if status == "ok" else payload
                    data = encode(rid, (status, packed))
                except Exception as exc:
                    pool.recycle()
                    data = encode(rid, ("error", error_envelope(HostError(str(exc)), "")))
                conn.send_bytes(data)
        finally:
            conn.close()

    def _answer(self, frame: bytes) -> tuple[str, Any]:
        try:
            request = unpickle_request(frame)
        except Exception as exc:
            error = HostError(
                f"the shared model host cannot unpickle the request ({type(exc).__name__}: "
                f"{exc}); arguments must be importable by name"
            )
            return "error", error_envelope(error, "")
        op = request[0]
        if self.load_error is not None:
            return "error", self.load_error
        if op in ("meta", "load"):
            return "ok", self.meta
        if op == "ping":
            return "ok", os.getpid()
        if op == "call":
            _, name, args, kwargs = request
            call = _Call("call", name, unpack(args), unpack(kwargs))
            call.key, call.rows = batch_key(name, call.args, call.kwargs)
        elif op == "getattr":
            call = _Call("getattr", request[1], (), {})
        elif op == "setattr":
            call = _Call("setattr", request[1], (unpack(request[2]),), {})
        else:
            return "error", error_envelope(HostError(f"unknown request {op!r}"), "")
        self.calls.put(call)
        # Bounded twice over: the watchdog ends this process once a call runs
        # past call_timeout; this wait covers the queue in front of it too.
        if not call.done.wait(self.call_timeout * 2 + 5.0):
            return "error", error_envelope(
                HostError(f"the shared host did not get to this call within {self.call_timeout} s"),
                "",
            )
        return call.result

    # -- lifetime ------------------------------------------------------------

    def watch(self) -> None:
        while True:
            time.sleep(min(0.2, self.grace / 4))
            since = self.running_since
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
                    self.loaded
                    and self.clients == 0
                    and time.monotonic() - self.last_change > self.grace
                )
            if idle:
                self.leave(0)

    def leave(self, code: int) -> None:
        """Exit, leaving no socket or lock file behind (the log stays for reading).

        The socket goes first: a starter that then takes a new lock file finds
        no socket of ours to connect to. One that had opened the old lock file
        sees it gone once it holds it, and tries again (``SharedHost._start``).
        """
        for path in self.files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os._exit(code)


def main() -> None:
    """Entry point: read the config, detach, bind, report, load, serve."""
    config_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    reader = Connection(config_fd, writable=False)
    config: dict[str, Any] = reader.recv()
    reader.close()
    if os.fork():  # the starter reaps this first process at once
        os._exit(0)
    os.setsid()
    take_output(os.open(config["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    sys.path[:] = config["sys_path"]
    with contextlib.suppress(FileNotFoundError):  # a dead host's: we hold the start lock
        os.unlink(config["socket"])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(config["socket"])
    os.chmod(config["socket"], 0o600)
    listener.listen(128)
    writer = Connection(report_fd, readable=False)
    writer.send({"pid": os.getpid()})
    writer.close()
    hub = _Hub(config)
    # `kill PID` stops a host cleanly: its clients see it gone, as after a crash.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: hub.leave(0))
    threading.Thread(target=hub.watch, name="forksafe-shared-watch", daemon=True).start()
    print(f"forksafe shared host {os.getpid()}: loading {config['describe']}", flush=True)
    hub.load(config["loader"])
    if hub.load_error is not None:
        # Not cached: whoever connects now gets the error, and the next use
        # after that starts a host that tries again.
        print(f"forksafe shared host {os.getpid()}: the load failed", flush=True)
        threading.Timer(_FAILED_LOAD_LINGER, hub.leave, (1,)).start()
    threading.Thread(target=hub.run_forever, name="forksafe-shared-model", daemon=True).start()
    for sock, peer in peers(listener):
        threading.Thread(
            target=hub.serve_client, args=(sock, peer), name="forksafe-shared-client", daemon=True
        ).start()
