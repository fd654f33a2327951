"""What crosses the boundary to a model host: small values pickled, large arrays shared.

Arrays of ``SHM_THRESHOLD`` bytes or more travel through POSIX shared memory
(mode 0600: private to the user). Each side writes into segments from its
own ``SegmentPool``, reused message after message: a fresh segment costs a
page fault per 4 KiB page (about 70 ms for 64 MB here), a reused one only
the copy. The receiver copies each array out at once, so the sender may
reuse the segment as soon as the peer has answered, and what a caller gets
is private memory that nothing else writes to. The rule that keeps segments
from leaking: only the creator unlinks, when its connection ends; a client
whose host died sweeps the host's segments by name; Python's resource
tracker unlinks whatever a killed creator left behind.
"""

from __future__ import annotations

import itertools
import mmap
import os
import secrets
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from forksafe._errors import HostError
from forksafe._frameworks import to_numpy

__all__ = ["PREFIX", "SHM_THRESHOLD", "SegmentPool", "sweep", "to_plain", "unpack"]

SHM_THRESHOLD = 1 << 20
PREFIX = "forksafe_"
_SHM_DIR = "/dev/shm"
# Segments a pool keeps for reuse, at most (larger messages still work: their
# extra segments are unlinked after use).
POOL_BYTES = 256 << 20
_counter = itertools.count()


@dataclass(frozen=True)
class _Shared:
    """Stands in for an array in a message; the array lives in segment ``name``."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def _walk(obj: Any, leaf: Any) -> Any:
    kind = type(obj)
    if kind is list:
        return [_walk(item, leaf) for item in obj]
    if kind is tuple:
        return tuple(_walk(item, leaf) for item in obj)
    if kind is dict:
        return {key: _walk(value, leaf) for key, value in obj.items()}
    return leaf(obj)


class SegmentPool:
    """The segments one side of a connection writes messages into, reused.

    ``pack`` takes segments for a message's large arrays; ``recycle`` makes
    them reusable once the peer has read that message (it has answered);
    ``close`` unlinks them all. Only the creating process ever unlinks: a
    fork child that inherited a pool leaves it alone.
    """

    def __init__(self, limit: int = POOL_BYTES) -> None:
        self._limit = limit
        self._free: list[SharedMemory] = []
        self._busy: list[SharedMemory] = []
        self._pid = os.getpid()

    def pack(self, obj: Any, threshold: int = SHM_THRESHOLD) -> Any:
        """``obj`` with every large array copied into a pooled shared-memory segment."""
        return _walk(obj, lambda leaf: self._share(leaf, threshold))

    def _share(self, leaf: Any, threshold: int) -> Any:
        if not isinstance(leaf, np.ndarray) or leaf.nbytes < threshold or leaf.dtype.hasobject:
            return leaf
        shm = self._take(leaf.nbytes)
        view: np.ndarray[Any, Any] = np.ndarray(leaf.shape, leaf.dtype, buffer=shm.buf)
        view[...] = leaf
        del view  # a live view would keep the mapping from closing
        return _Shared(shm.name, leaf.shape, leaf.dtype)

    def _take(self, nbytes: int) -> SharedMemory:
        fits = [shm for shm in self._free if shm.size >= nbytes]
        if fits:
            shm = min(fits, key=lambda s: s.size)
            self._free.remove(shm)
        else:
            name = f"{PREFIX}{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
            shm = SharedMemory(name=name, create=True, size=nbytes)
        self._busy.append(shm)
        return shm

    def recycle(self) -> None:
        """The peer has read the last message: its segments may be reused."""
        self._free += self._busy
        self._busy = []
        self._free.sort(key=lambda s: s.size)
        while self._free and sum(s.size for s in self._free) > self._limit:
            _unlink(self._free.pop())  # the largest goes first

    def close(self) -> None:
        """Unlink every segment (in the creating process only)."""
        segments, self._free, self._busy = self._free + self._busy, [], []
        if os.getpid() == self._pid:
            for shm in segments:
                _unlink(shm)

    def names(self) -> list[str]:
        """Names of the segments this pool holds."""
        return [shm.name for shm in self._free + self._busy]

    def __len__(self) -> int:
        return len(self._free) + len(self._busy)


def _unlink(shm: SharedMemory) -> None:
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:  # swept already: only our tracker registration is left
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


def _receive(leaf: Any) -> Any:
    if not isinstance(leaf, _Shared):
        return leaf
    size = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
    if os.path.isdir(_SHM_DIR):
        # Straight to the file: attaching a SharedMemory would register the
        # segment with this process's resource tracker as if it owned it.
        try:
            fd = os.open(os.path.join(_SHM_DIR, leaf.name), os.O_RDONLY)
        except FileNotFoundError:
            raise _vanished(leaf) from None
        try:
            mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            view = np.frombuffer(mapping, dtype=leaf.dtype).reshape(leaf.shape)
            array = view.copy()
            del view
        finally:
            mapping.close()
        return array
    try:
        shm = SharedMemory(name=leaf.name)
    except FileNotFoundError:
        raise _vanished(leaf) from None
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    try:
        shared: np.ndarray[Any, Any] = np.ndarray(leaf.shape, leaf.dtype, buffer=shm.buf)
        array = shared.copy()
        del shared
    finally:
        shm.close()
    return array


def _vanished(leaf: _Shared) -> HostError:
    return HostError(f"shared-memory segment {leaf.name} vanished before it was read")


def unpack(obj: Any) -> Any:
    """``obj`` with its shared arrays copied back out of their segments."""
    return _walk(obj, _receive)


def to_plain(obj: Any) -> Any:
    """Framework tensors in ``obj`` as numpy arrays (they cannot cross processes)."""
    return _walk(obj, to_numpy)


_PLAIN = (type(None), bool, int, float, complex, str, bytes, np.ndarray, np.generic, np.dtype)


def is_plain(obj: Any) -> bool:
    """Plain data: scalars, strings, numpy values, and lists/tuples/dicts of them."""
    if isinstance(obj, list | tuple | set | frozenset):
        return all(is_plain(item) for item in obj)
    if isinstance(obj, dict):
        return all(is_plain(k) and is_plain(v) for k, v in obj.items())
    if isinstance(obj, np.ndarray):
        return not obj.dtype.hasobject
    return isinstance(obj, _PLAIN)


def sweep(host_pid: int) -> int:
    """Unlink segments a dead host created and never handed over; return how many."""
    prefix = f"{PREFIX}{host_pid}_"
    try:
        names = [n for n in os.listdir(_SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return 0
    for name in names:
        try:
            shm = SharedMemory(name=name)
        except FileNotFoundError:
            continue
        shm.close()
        shm.unlink()
    return len(names)
