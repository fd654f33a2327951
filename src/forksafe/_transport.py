"""What crosses the boundary to a model host: small values pickled, large arrays shared.

Arrays of ``SHM_THRESHOLD`` bytes or more travel through POSIX shared memory
(mode 0600: private to the user). The rule that keeps segments from leaking:
the *receiver* maps the segment and unlinks its name at once (the array it
gets is that mapping: no copy); the
*sender* unlinks on every path afterwards too (a no-op when the receiver
already did), and a client whose host died sweeps the host's segments by
name. Python's resource tracker stays balanced on both sides and unlinks
whatever a killed creator left behind.
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

__all__ = ["PREFIX", "SHM_THRESHOLD", "Outgoing", "sweep", "to_plain", "unpack"]

SHM_THRESHOLD = 1 << 20
PREFIX = "forksafe_"
_SHM_DIR = "/dev/shm"
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


class Outgoing:
    """The segments created for one message, released on every path."""

    def __init__(self) -> None:
        self._segments: list[SharedMemory] = []

    def pack(self, obj: Any, threshold: int = SHM_THRESHOLD) -> Any:
        """``obj`` with every large array moved into a new shared-memory segment."""
        return _walk(obj, lambda leaf: self._share(leaf, threshold))

    def _share(self, leaf: Any, threshold: int) -> Any:
        if not isinstance(leaf, np.ndarray) or leaf.nbytes < threshold or leaf.dtype.hasobject:
            return leaf
        name = f"{PREFIX}{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
        shm = SharedMemory(name=name, create=True, size=leaf.nbytes)
        self._segments.append(shm)
        view: np.ndarray[Any, Any] = np.ndarray(leaf.shape, leaf.dtype, buffer=shm.buf)
        view[...] = leaf
        del view  # a live view would keep the mapping from closing
        return _Shared(name, leaf.shape, leaf.dtype)

    def release(self) -> None:
        """Close and unlink every segment (the receiver may have unlinked it already)."""
        segments, self._segments = self._segments, []
        for shm in segments:
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                # Unlinked by the receiver: only our tracker registration is left.
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self._segments)


def _receive(leaf: Any) -> Any:
    if not isinstance(leaf, _Shared):
        return leaf
    if os.path.isdir(_SHM_DIR):
        return _map(leaf)
    try:
        shm = SharedMemory(name=leaf.name)
    except FileNotFoundError:
        raise _vanished(leaf) from None
    try:
        view: np.ndarray[Any, Any] = np.ndarray(leaf.shape, leaf.dtype, buffer=shm.buf)
        array = view.copy()
        del view
    finally:
        shm.close()
        shm.unlink()
    return array


def _map(leaf: _Shared) -> np.ndarray[Any, Any]:
    """Zero-copy: map the segment, unlink its name at once, hand out the mapping.

    The array keeps the mapping alive; with the name gone nothing can leak
    and no other process can reach the pages.
    """
    path = os.path.join(_SHM_DIR, leaf.name)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise _vanished(leaf) from None
    try:
        os.unlink(path)
        size = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
        mapping = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    return np.frombuffer(mapping, dtype=leaf.dtype).reshape(leaf.shape)


def _vanished(leaf: _Shared) -> HostError:
    return HostError(f"shared-memory segment {leaf.name} vanished before it was read")


def unpack(obj: Any) -> Any:
    """``obj`` with its shared arrays in place again; their segments' names are unlinked."""
    return _walk(obj, _receive)


def to_plain(obj: Any) -> Any:
    """Framework tensors in ``obj`` as numpy arrays (they cannot cross processes)."""

    def convert(leaf: Any) -> Any:
        if isinstance(leaf, np.ndarray | np.generic) or not hasattr(leaf, "__array__"):
            return leaf
        if type(leaf).__module__.partition(".")[0] in ("tensorflow", "torch", "jax", "jaxlib"):
            return np.asarray(leaf)
        return leaf

    return _walk(obj, convert)


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
