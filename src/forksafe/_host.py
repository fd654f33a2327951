"""The model host's loop: load the model, then answer one client's requests.

Runs in a process forked from the template. It exits when its client closes
the connection or dies (watched by a thread through a pidfd where Linux has
one, else by polling the pid), so a host never outlives the process it serves.
"""

from __future__ import annotations

import os
import pickle
import select
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError
from forksafe._frameworks import backend_of
from forksafe._graph import GraphOwner, load_owned
from forksafe._transport import SegmentPool, is_plain, to_plain, unpack

__all__ = ["serve"]

_POLL = 1.0  # seconds between liveness checks where there is no pidfd


def _client_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Host:
    def __init__(self) -> None:
        self.model: Any = None
        self.owner: GraphOwner | None = None

    def handle(self, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "load":
            return self.load(request[1])
        if op == "getattr":
            return self.getattr(request[1])
        if op == "call":
            _, name, args, kwargs = request
            return self.call(name, unpack(args), unpack(kwargs))
        if op == "setattr":
            setattr(self.model, request[1], unpack(request[2]))
            return None
        if op == "ping":
            return os.getpid()
        raise HostError(f"unknown request {op!r}")

    def load(self, source: Any) -> dict[str, Any]:
        self.model, self.owner = load_owned(source.load)
        kind = type(self.model)
        return {
            "backend": backend_of(self.model),
            "graph_mode": self.owner is not None,
            "type": f"{kind.__module__}.{kind.__qualname__}",
        }

    def getattr(self, name: str) -> tuple[str, Any]:
        value = getattr(self.model, name)
        if callable(value):
            return ("callable", None)
        if not is_plain(value):
            raise HostError(
                f"attribute {name!r} of the model is {_describe(value)}, which cannot "
                "cross a process boundary; with the model in a host process only plain data "
                "attributes (numbers, strings, arrays, and lists/tuples/dicts of them) and "
                "method calls work"
            )
        return ("value", value)

    def call(self, name: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        fn = self.model if name is None else getattr(self.model, name)
        result = fn(*args, **kwargs) if self.owner is None else self.owner.call(fn, *args, **kwargs)
        return to_plain(result)


def _describe(value: Any) -> str:
    kind = type(value).__name__
    if isinstance(value, list | tuple | set | frozenset) and value:
        inner = sorted({type(item).__name__ for item in value if not is_plain(item)})
        return f"a {kind} of {', '.join(inner)}"
    return f"a {kind}"


def _error(exc: BaseException, what: str) -> tuple[str, Any, str]:
    text = traceback.format_exc()
    try:
        pickle.dumps(exc)
    except Exception:
        exc = HostError(f"{what} raised {type(exc).__name__}: {exc}")
    return ("error", exc, text)


def _exit_when_client_dies(client_pid: int, pool: SegmentPool) -> None:
    # A thread, so that the serving loop blocks in recv with nothing to poll.
    try:
        pidfd = os.pidfd_open(client_pid)
    except (AttributeError, OSError):
        while _client_alive(client_pid):
            time.sleep(_POLL)
    else:
        select.select([pidfd], [], [])
    # Unlinking under the serving thread is safe: its mappings stay valid.
    pool.close()
    os._exit(0)


def serve(conn: Connection, client_pid: int) -> None:
    """Answer ``conn`` until the client closes it or dies."""
    pool = SegmentPool()
    threading.Thread(target=_exit_when_client_dies, args=(client_pid, pool), daemon=True).start()
    host = _Host()
    conn.send(("hello", os.getpid()))
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            pool.recycle()  # the client has read the previous reply
            try:
                request = pickle.loads(data)
            except Exception as exc:
                conn.send(
                    _error(
                        HostError(
                            f"the model host cannot unpickle the request ({type(exc).__name__}: "
                            f"{exc}); a loader or factory must be importable by name (defined at "
                            "module level in a module other than __main__)"
                        ),
                        "unpickle",
                    )
                )
                continue
            what = " ".join(str(part) for part in request[:2])
            try:
                reply: tuple[str, Any, str] = ("ok", pool.pack(host.handle(request)), "")
            except Exception as exc:
                pool.recycle()
                reply = _error(exc, f"the model host's {what} request")
            del request  # drop views of the request's shared arrays before the next one
            try:
                # Plain pickle: half the cost of Connection.send's ForkingPickler.
                conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:
                pool.recycle()
                conn.send(
                    _error(
                        HostError(f"the result of {what} cannot cross a process boundary: {exc}"),
                        "send",
                    )
                )
            except OSError:
                return
    finally:
        pool.close()
