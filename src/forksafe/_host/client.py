"""Client side: ``HostClient`` (connections to one model's host) and ``RemoteModel``.

Where the host comes from is the opener's business (``client_private``: a
host of this client's own, forked from the process tree's template;
``client_shared``: the one host this user's processes share). An opener
hands back a connection whose first request is answered: the host's pid and
what it loaded. Calls on a private host are serialised by a lock; every wait
is bounded by the proxy's ``timeout``; an exchange that is interrupted or
fails in any way retires the connection (and a host of the client's own), so
no answer can reach a later call.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import logging
import os
import pickle
import signal
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from forksafe._errors import ForkSafeError, HostCrashedError, HostError, HostTimeoutError
from forksafe._host.plain import signature_from_plain
from forksafe._host.shm import SegmentPool, sweep, unpack
from forksafe._host.wire import FIRST_RID, checkpoint, decode, encode, raise_envelope

__all__ = ["HostClient", "Opener", "RemoteModel"]

log = logging.getLogger("forksafe.host")
# What pickle and the frameworks' __reduce__ raise for an object that cannot be sent.
# Anything else raised while pickling came from elsewhere (a signal handler's soft
# time limit) and reaches the caller as itself.
_UNSENDABLE = (
    pickle.PicklingError,
    TypeError,
    AttributeError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    ImportError,
)


class Opener(Protocol):
    """Where a client's host comes from."""

    owns_host: bool  # the host serves only this client: retiring it stops it

    def open(self, timeout: float) -> tuple[Connection, int, dict[str, Any]]:
        """A connection whose first request is answered: it, the host's pid, what it loaded."""
        ...

    def abandon(self, conn: Connection, pid: int) -> None:
        """Stop using a connection that nobody waits for any more."""
        ...

    def release(self) -> None:
        """This client has no connection left: the next ``open`` may find another host."""
        ...


def _open(opener: Opener, timeout: float) -> tuple[Connection, int, dict[str, Any]]:
    """``opener.open`` run off this thread, so no signal handler can cut it short.

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
            box["result"] = opener.open(timeout)
        except BaseException as exc:
            box["error"] = exc
        with settled:
            done.set()
            if box.get("abandoned") and "result" in box:
                opener.abandon(*box["result"][:2])

    threading.Thread(target=run, name="forksafe-host-start", daemon=True).start()
    try:
        # The opener's own waits are bounded by timeout (twice: a lock, the connect).
        if not done.wait(2 * timeout + 5.0):
            raise HostTimeoutError(f"a model host did not start within {2 * timeout} s")
    except BaseException:
        with settled:
            box["abandoned"] = True
            if done.is_set() and "result" in box:
                opener.abandon(*box["result"][:2])
        raise
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


def _run_through(*steps: Callable[[], object]) -> None:
    """Run every step even when a signal handler raises in one; then raise the first.

    The steps are idempotent, so one that was interrupted is tried again
    (a few times: a step that keeps failing is not retried forever).
    """
    interrupted: BaseException | None = None
    for step in steps:
        for _attempt in range(3):
            try:
                step()
                break
            except BaseException as exc:
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


def _close(conn: Connection, pool: SegmentPool, on_closed: Callable[[], None]) -> None:
    """Close a channel's connection and pool, then tell its client.

    The garbage collector runs this for a channel nobody retired (one an
    interrupt dropped, or a dropped proxy's), where a raise reaches no one:
    the cleanup must not depend on not being interrupted.
    """
    _run_through(conn.close, functools.partial(checkpoint, "client.closing"), pool.close, on_closed)


_channel_keys = itertools.count()


def _closed(open_keys: set[int], key: int, opener: Opener) -> None:
    """A channel closed: the last of a client's lets its opener find another host."""
    open_keys.discard(key)
    if not open_keys:
        opener.release()


class _Channel:
    """One connection to a host: its requests' ids, and the segments this side sends in."""

    __slots__ = ("__weakref__", "conn", "finalizer", "host_pid", "pool", "rid")

    def __init__(self, conn: Connection, host_pid: int, on_closed: Callable[[], None]) -> None:
        self.conn = conn
        self.host_pid = host_pid
        self.pool = SegmentPool()
        self.rid = FIRST_RID  # the opener's first request was this connection's first
        self.finalizer = weakref.finalize(self, _close, conn, self.pool, on_closed)


class HostClient:
    """This process's connections to the host that serves one model.

    A host of the client's own serves one call at a time, over one
    connection. A shared host serves many: each thread's call takes an idle
    connection or opens one, so calls from threads run (and batch) at once.
    """

    def __init__(self, opener: Opener, timeout: float) -> None:
        self.opener = opener
        self.timeout = timeout
        self.pid = os.getpid()
        self.host_pid: int | None = None  # of the last connection that answered
        self.meta: dict[str, Any] = {}
        self.lock = threading.RLock()  # a host of our own: one call at a time
        self.idle: list[_Channel] = []
        self.idle_lock = threading.Lock()
        # Channels open (idle or in a call), counted down by each channel's
        # finalizer, which also runs for a channel an interrupt dropped. It
        # takes no lock: the collector may run it while this thread holds one.
        self.open: set[int] = set()

    def request(self, message: tuple[Any, ...], *, what: str) -> Any:
        """Send ``message`` to the host (starting one if needed) and return its answer."""
        if os.getpid() != self.pid:
            raise ForkSafeError(
                f"this connection to a model host belongs to process {self.pid}, and this is "
                f"process {os.getpid()}, forked from it; use the model through its forksafe "
                "proxy here (methods taken from the proxy follow it across a fork)"
            )
        if not self.opener.owns_host:
            return self._through(self._idle_or_new(), message, what)
        try:
            if not self.lock.acquire(timeout=self.timeout):
                raise HostTimeoutError(
                    f"waited {self.timeout} s for another thread's call to the model host"
                )
            checkpoint("client.locked")
            return self._through(self._idle_or_new(), message, what)
        finally:
            # A signal handler may raise the moment the lock is taken, before a
            # flag could record it; the lock itself knows (an RLock's owner).
            if self.lock._is_owned():  # type: ignore[attr-defined]
                self.lock.release()

    def segment_names(self) -> list[str]:
        """The shared-memory segments this side holds for reuse (for leak checks)."""
        with self.idle_lock:
            return [name for channel in self.idle for name in channel.pool.names()]

    def connect(self) -> None:
        """Reach the host now (starting and loading it if needed), keeping the connection."""
        channel = self._idle_or_new()
        with self.idle_lock:
            self.idle.append(channel)

    def _idle_or_new(self) -> _Channel:
        with self.idle_lock:
            if self.idle:
                return self.idle.pop()
        conn, pid, meta = _open(self.opener, self.timeout)
        key = next(_channel_keys)
        channel = _Channel(conn, pid, functools.partial(_closed, self.open, key, self.opener))
        self.open.add(key)  # after the finalizer exists: a channel is never counted twice
        log.info(
            "connected to %s model host %s (%s)",
            "a private" if self.opener.owns_host else "the shared",
            pid,
            meta.get("type", "?"),
        )
        self.host_pid = pid
        self.meta = meta
        return channel

    def _through(self, channel: _Channel, message: tuple[Any, ...], what: str) -> Any:
        result = self._exchange(channel, message, what=what)
        # An interrupt from here on drops an answered channel: the collector closes it.
        checkpoint("client.answered")
        self.host_pid = channel.host_pid
        with self.idle_lock:
            self.idle.append(channel)
        return result

    def _exchange(self, channel: _Channel, message: tuple[Any, ...], *, what: str) -> Any:
        """One request and its answer; any failure retires ``channel`` before it propagates."""
        conn, pool = channel.conn, channel.pool
        channel.rid += 1
        rid = channel.rid
        try:
            frame = encode(rid, pool.pack(message))
        except Exception as exc:
            pool.recycle()  # nothing was sent: the host is still in step
            with self.idle_lock:
                self.idle.append(channel)
            if not isinstance(exc, _UNSENDABLE):
                raise  # a signal handler's (a soft time limit), not the arguments'
            raise HostError(
                f"cannot send {what} to the model host: {type(exc).__name__}: {exc}; "
                "arguments, loaders and factories must be picklable (functions and "
                "classes defined at module level in an importable module)"
            ) from exc
        except BaseException:
            pool.recycle()
            self._retire(channel, crashed=False)
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
            pid = self._retire(channel, crashed=False)
            log.warning("model host %s did not answer %s within %s s", pid, what, self.timeout)
            raise HostTimeoutError(
                f"the model host (pid {pid}) did not answer {what} within {self.timeout} s; "
                + (
                    "it was stopped, and the next call starts a new one"
                    if self.opener.owns_host
                    else "this call's connection to it was closed"
                )
            ) from None
        except (EOFError, OSError) as exc:
            pid = self._retire(channel, crashed=True)
            log.warning("model host %s died during %s", pid, what)
            raise HostCrashedError(
                f"the model host process {pid} died during {what} (killed, out of memory, or "
                "crashed); the next call starts a new host"
            ) from exc
        except BaseException:
            # Interrupted (KeyboardInterrupt, a signal handler's exception, a
            # timeout of the caller's) or anything else mid-exchange: this
            # connection may still owe an answer, so it is never used again.
            self._retire(channel, crashed=False)
            raise
        finally:
            pool.recycle()  # the host has answered (or is gone): it is done with them
        if status == "ok":
            return payload
        raise raise_envelope(payload, channel.host_pid)

    def _retire(self, channel: _Channel, *, crashed: bool) -> int:
        """Never use ``channel`` again (stopping a host of our own); return the host's pid.

        A crash retires every idle connection to that host too: each caller
        hears of one crash once.
        """
        pid = channel.host_pid
        owned = self.opener.owns_host
        stale: list[_Channel] = []

        def kill() -> None:  # a host of our own, before closing: it dies without a word
            if owned:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

        def take_stale() -> None:
            if crashed or owned:
                with self.idle_lock:
                    stale.extend(c for c in self.idle if c.host_pid == pid and c not in stale)
                    self.idle = [c for c in self.idle if c.host_pid != pid]

        def close_stale() -> None:
            for other in stale:
                other.finalizer()

        def forget() -> None:
            if crashed or owned:
                if self.host_pid == pid:
                    self.host_pid = None
                sweep(pid)

        # An interrupt (a second signal) part way must not leave a killed
        # host's idle connections to a later call.
        _run_through(kill, channel.finalizer, take_stale, close_stale, forget)
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
        self.__signature__ = signature_from_plain(about.get("signature"))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", self._name, args, kwargs), what=self._name)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of the model in host pid {self._client.host_pid}>"


class RemoteModel:
    """Stands in for a model that lives in a host process."""

    __slots__ = ("__weakref__", "_client", "_describe", "_methods", "_signature")

    def __init__(self, opener: Opener, *, describe: str, timeout: float) -> None:
        self._client: HostClient
        self._methods: dict[str, RemoteMethod]
        self._describe: str
        object.__setattr__(self, "_client", HostClient(opener, timeout))
        object.__setattr__(self, "_methods", {})
        object.__setattr__(self, "_describe", describe)
        object.__setattr__(self, "_signature", None)
        self._client.connect()

    @property
    def host_pid(self) -> int | None:
        """The host's pid, or ``None`` between a crash and the next call."""
        return self._client.host_pid

    @property
    def meta(self) -> dict[str, Any]:
        """What the host reported when it loaded the model."""
        return self._client.meta

    def host_stats(self) -> dict[str, Any] | None:
        """A shared host's own figures (over a short connection), else ``None``."""
        stats = getattr(self._client.opener, "stats", None)
        return stats() if callable(stats) else None

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

    def __delattr__(self, name: str) -> None:
        self._client.request(("delattr", name), what=f"deleting {name!r}")

    def __dir__(self) -> list[str]:
        names: list[str] = self._client.request(("dir",), what="dir()")
        return names

    @property
    def __signature__(self) -> inspect.Signature | None:
        """The signature of the model's own ``__call__``, as the host sees it (asked once)."""
        if self._signature is None:
            plain = self._client.request(("signature", None), what="the signature")
            object.__setattr__(self, "_signature", signature_from_plain(plain) or False)
        return self._signature or None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.request(("call", None, args, kwargs), what="__call__")

    def __repr__(self) -> str:
        return f"<forksafe remote model {self._describe!r} in host pid {self._client.host_pid}>"
