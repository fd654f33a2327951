"""Host side, shared hosts: dynamic batching: which calls may be joined, and the model's queue.

Two calls may be joined when they call the same method with the same
keyword arguments and one positional argument each: an array, or a list,
tuple or dict of arrays, agreeing on everything but the first axis (the
rows). The joined call runs once on the rows of all of them; its result is
split back by rows, so each caller gets exactly its own. A result that
cannot be split that way (its first axis is not the rows) makes each call
run alone instead.

``Batcher`` is the model's one thread: it takes calls in order, joins
what it can (waiting at most ``max_wait_ms`` for company), runs them
through the host's ``Answerer``, and keeps the figures ``forksafe hosts``
reports (calls, batches, rows per batch, queue waits).
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forksafe._host.host_answer import Answerer, invoke, plain_result
from forksafe._host.wire import error_envelope

__all__ = ["BATCHABLE", "Batcher", "Call", "batch_key", "join", "split"]

_WAITS_KEPT = 4096  # queue waits remembered for the percentiles

# Methods that map rows to rows: what a shared host joins.
BATCHABLE = frozenset({None, "predict", "predict_on_batch", "predict_step", "forward"})


def _leaves(x: Any) -> list[Any] | None:
    """The arrays of a batchable argument, in a fixed order; ``None`` if it is not one."""
    if isinstance(x, np.ndarray):
        return [x] if x.ndim >= 1 and not x.dtype.hasobject else None
    if type(x) in (list, tuple):
        found = [_leaves(item) for item in x]
    elif type(x) is dict:
        found = [_leaves(x[k]) for k in sorted(x, key=repr)]
    else:
        return None
    if not found or any(f is None for f in found):
        return None
    return [leaf for f in found for leaf in f]  # type: ignore[union-attr]


def _shape_key(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ("a", x.dtype.str, x.shape[1:])
    if isinstance(x, dict):
        return ("d", tuple((k, _shape_key(x[k])) for k in sorted(x, key=repr)))
    return (type(x).__name__, tuple(_shape_key(item) for item in x))


def batch_key(
    method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...] | None, int]:
    """What this call may be joined with (``None``: nothing), and its rows."""
    if method not in BATCHABLE or len(args) != 1:
        return None, 0
    leaves = _leaves(args[0])
    if not leaves or len({leaf.shape[0] for leaf in leaves}) != 1:
        return None, 0
    try:
        options = pickle.dumps(sorted(kwargs.items()), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None, 0
    return (method, options, _shape_key(args[0])), int(leaves[0].shape[0])


def join(arguments: list[Any]) -> Any:
    """One argument holding the rows of all ``arguments`` (of one key), in order."""
    first = arguments[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(arguments)
    if isinstance(first, dict):
        return {k: join([a[k] for a in arguments]) for k in first}
    return type(first)(join([a[i] for a in arguments]) for i in range(len(first)))


def split(result: Any, rows: list[int]) -> list[Any] | None:
    """``result`` cut back into one piece per call, by ``rows``; ``None`` if it cannot be."""
    total = sum(rows)
    if isinstance(result, np.ndarray):
        if result.ndim == 0 or result.shape[0] != total:
            return None
        bounds = np.cumsum(rows)[:-1]
        return [part.copy() for part in np.split(result, bounds)]
    if type(result) in (list, tuple):
        pieces = [split(item, rows) for item in result]
        if not pieces or any(p is None for p in pieces):
            return None
        return [type(result)(p[i] for p in pieces) for i in range(len(rows))]  # type: ignore[index]
    if type(result) is dict:
        parts = {k: split(v, rows) for k, v in result.items()}
        if not parts or any(p is None for p in parts.values()):
            return None
        return [{k: p[i] for k, p in parts.items()} for i in range(len(rows))]  # type: ignore[index]
    return None


@dataclass
class Call:
    """One request of one client, waiting for the model."""

    request: tuple[Any, ...]
    key: Any = None  # what it may be joined with; None: it runs alone
    rows: int = 0
    queued: float = field(default_factory=time.monotonic)
    result: tuple[str, Any] = ("error", None)
    done: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """The model's thread: calls in order, joined where they can be, answered each."""

    def __init__(
        self, answerer: Answerer, max_batch: int, max_wait_ms: float, clients: Callable[[], int]
    ) -> None:
        self.answerer = answerer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1e3
        self.clients = clients
        self.calls: queue.Queue[Call] = queue.Queue()
        self.held: deque[Call] = deque()
        self.running_since: float | None = None  # read by the host's watchdog
        self.served = 0
        self.batches = 0
        self.batched_rows = 0
        self.waits: deque[float] = deque(maxlen=_WAITS_KEPT)

    def submit(self, request: tuple[Any, ...]) -> Call:
        """Queue ``request`` (a call, or any other question about the model) for its thread."""
        call = Call(request)
        if request[0] == "call":
            _, name, args, kwargs = request
            call.key, call.rows = batch_key(name, args, kwargs)
        self.calls.put(call)
        return call

    def stats(self) -> dict[str, Any]:
        """Model calls served, model runs, mean rows per run, queue wait p50/p99 (ms).

        Attribute reads and writes are queued like calls but not counted.
        """
        waits = sorted(self.waits)

        def percentile(q: float) -> float | None:
            return (
                round(waits[min(int(q * len(waits)), len(waits) - 1)] * 1e3, 3) if waits else None
            )

        return {
            "calls": self.served,
            "batches": self.batches,
            "mean_rows_per_batch": round(self.batched_rows / self.batches, 2)
            if self.batches
            else None,
            "queue_wait_p50_ms": percentile(0.5),
            "queue_wait_p99_ms": percentile(0.99),
        }

    def _next(self) -> Call:
        return self.held.popleft() if self.held else self.calls.get()

    def run_forever(self) -> None:
        """Take calls for ever; this thread never dies (its callers would wait)."""
        while True:
            first = self._next()
            batch = [first]
            try:
                if first.key is not None:
                    self._gather(batch)
                self._run(batch)
            except BaseException as exc:
                envelope = error_envelope(exc, traceback.format_exc())
                for call in batch:
                    call.result = ("error", envelope)
                    call.done.set()

    def _gather(self, batch: list[Call]) -> None:
        """Join calls of the same key to ``batch``, up to max_batch rows, waiting a little.

        Calls already waiting are always looked at; ``max_wait_ms`` is how long
        to wait for more. Calls that do not fit keep their order for later.
        """
        rows = batch[0].rows
        deadline = time.monotonic() + self.max_wait
        held, self.held = list(self.held), deque()
        skipped_held: list[Call] = []
        skipped_new: list[Call] = []
        # Each client connection has at most one call in flight: with every
        # one in the batch already, no company can come.
        while rows < self.max_batch and len(batch) < self.clients():
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

    def _run(self, batch: list[Call]) -> None:
        self.running_since = now = time.monotonic()
        self.waits.extend(now - call.queued for call in batch)
        try:
            if len(batch) > 1 and self._run_joined(batch):
                return
            for call in batch:
                self._run_one(call)
        finally:
            self.running_since = None
            self.served += sum(call.request[0] == "call" for call in batch)
            for call in batch:
                call.done.set()

    def _run_joined(self, batch: list[Call]) -> bool:
        _, name, _, kwargs = batch[0].request
        try:
            joined = invoke(
                self.answerer.model,
                self.answerer.owner,
                name,
                (join([c.request[2][0] for c in batch]),),
                kwargs,
            )
            pieces = split(plain_result(joined, name), [c.rows for c in batch])
        except Exception:  # each call on its own then: each gets its own answer or error
            return False
        if pieces is None:
            return False
        self.batches += 1
        self.batched_rows += sum(c.rows for c in batch)
        for call, piece in zip(batch, pieces, strict=True):
            call.result = ("ok", piece)
        return True

    def _run_one(self, call: Call) -> None:
        if call.request[0] == "call":
            self.batches += 1
            self.batched_rows += call.rows
        try:
            call.result = ("ok", self.answerer.answer(call.request))
        except Exception as exc:
            call.result = ("error", error_envelope(exc, traceback.format_exc()))
