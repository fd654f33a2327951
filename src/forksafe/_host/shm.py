"""Both sides: large arrays cross to and from a host through POSIX shared memory.

Arrays of ``SHM_THRESHOLD`` bytes or more travel through POSIX shared memory
(mode 0600: private to the user). Each side writes into segments from its
own ``SegmentPool``, reused message after message: a fresh segment costs a
page fault per 4 KiB page (about 70 ms for 64 MB here), a reused one only
the copy. The receiver copies each array out at once, so the sender may
reuse the segment as soon as the peer has answered, and what a caller gets
is private memory that nothing else writes to.

Segments are named ``forksafe_<creator pid>_...`` and never registered with
multiprocessing's resource tracker (a fork child shares its parent's
tracker, which would keep a killed child's segments until the parent
exits). Instead: the creator unlinks its own when its connection ends; a
host whose client died sweeps the client's; the template sweeps a host it
reaped, and that host's client if it is gone too; a client whose host died
sweeps the host's. A sweep touches only this user's regular files.
"""

from __future__ import annotations

import _posixshmem  # type: ignore[import-not-found]
import contextlib
import itertools
import mmap
import os
import secrets
import select
import stat
import time
from typing import Any, NamedTuple

import numpy as np

from forksafe._errors import HostError

__all__ = [
    "PREFIX",
    "SHM_THRESHOLD",
    "SegmentPool",
    "Shared",
    "gone",
    "sweep",
    "unpack",
]

SHM_THRESHOLD = 1 << 20
PREFIX = "forksafe_"
_SHM_DIR = "/dev/shm"
# Segments a pool keeps for reuse, at most (larger messages still work: their
# extra segments are unlinked after use).
POOL_BYTES = 256 << 20
_counter = itertools.count()


class Shared(NamedTuple):
    """Stands in for an array in a message; the array lives in segment ``name``."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


class _Segment:
    __slots__ = ("buf", "name", "size")

    def __init__(self, size: int, into: list[_Segment]) -> None:
        """Create a segment, in ``into`` before it exists: an interrupt never loses it.

        Interrupted, it stays there unmade (``buf`` is ``None``) and is unlinked
        by name when its pool recycles or closes.
        """
        self.buf: mmap.mmap | None = None
        self.size = size
        for _attempt in range(8):
            self.name = f"{PREFIX}{os.getpid()}_{next(_counter)}_{secrets.token_hex(4)}"
            into.append(self)
            fd = -1
            try:
                fd = _posixshmem.shm_open(
                    "/" + self.name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600
                )
                os.ftruncate(fd, size)
                self.buf = mmap.mmap(fd, size)
                return
            except FileExistsError:  # a name someone planted: take another
                into.remove(self)
            except BaseException:
                if fd >= 0:
                    _unlink_name(self.name)
                raise
            finally:
                if fd >= 0:
                    os.close(fd)
        raise HostError("could not create a shared-memory segment: every name was taken")

    def unlink(self) -> None:
        _unlink_name(self.name)
        # A view still alive (in an interrupted call's traceback) keeps the
        # mapping until it goes; the name is gone already.
        if self.buf is not None:
            with contextlib.suppress(BufferError):
                self.buf.close()


def _unlink_name(name: str) -> None:
    with contextlib.suppress(OSError):  # swept already
        _posixshmem.shm_unlink("/" + name)


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
        self._free: list[_Segment] = []
        self._busy: list[_Segment] = []
        self._pid = os.getpid()

    def pack(self, obj: Any, threshold: int = SHM_THRESHOLD) -> Any:
        """``obj`` with every large array copied into a pooled shared-memory segment."""
        return _walk(obj, lambda leaf: self._share(leaf, threshold))

    def _share(self, leaf: Any, threshold: int) -> Any:
        if not isinstance(leaf, np.ndarray) or leaf.nbytes < threshold or leaf.dtype.hasobject:
            return leaf
        segment = self._take(leaf.nbytes)
        view = None
        try:
            view = np.ndarray(leaf.shape, leaf.dtype, buffer=segment.buf)
            view[...] = leaf
        finally:
            del view  # a live view would keep the mapping from closing
        return Shared(segment.name, leaf.shape, leaf.dtype)

    def _take(self, nbytes: int) -> _Segment:
        # In ``_busy`` before it leaves ``_free``: an interrupt in between
        # leaves it in both lists (``recycle`` dedupes), never in neither.
        fits = [s for s in self._free if s.size >= nbytes and s.buf is not None]
        if not fits:
            return _Segment(nbytes, into=self._busy)
        segment = min(fits, key=lambda s: s.size)
        self._busy.append(segment)
        self._free.remove(segment)
        return segment

    def recycle(self) -> None:
        """The peer has read the last message: its segments may be reused."""
        every = {id(s): s for s in self._free + self._busy}.values()
        self._busy = []
        self._free = [s for s in every if s.buf is not None]
        for unmade in (s for s in every if s.buf is None):  # interrupted while being made
            unmade.unlink()
        self._free.sort(key=lambda s: s.size)
        while self._free and sum(s.size for s in self._free) > self._limit:
            self._free.pop().unlink()  # the largest goes first

    def close(self) -> None:
        """Unlink every segment (in the creating process only).

        Each leaves its list only once unlinked: closing again after an
        interrupt finishes the job (unlinking twice is harmless).
        """
        mine = os.getpid() == self._pid
        for segments in (self._busy, self._free):
            while segments:
                if mine:
                    segments[-1].unlink()
                segments.pop()

    def names(self) -> list[str]:
        """Names of the segments this pool holds."""
        return [s.name for s in self._free + self._busy]

    def __len__(self) -> int:
        return len(self._free) + len(self._busy)


def _receive(leaf: Any) -> Any:
    if not isinstance(leaf, Shared):
        return leaf
    size = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
    try:
        fd = _posixshmem.shm_open("/" + leaf.name, os.O_RDONLY, 0)
    except FileNotFoundError:
        raise HostError(f"shared-memory segment {leaf.name} vanished before it was read") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid() or info.st_size < size:
            raise HostError(f"shared-memory segment {leaf.name} is not the one that was sent")
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ) if size else None
    finally:
        os.close(fd)
    if mapping is None:
        return np.empty(leaf.shape, leaf.dtype)
    view = None
    try:
        view = np.frombuffer(mapping, dtype=leaf.dtype).reshape(leaf.shape)
        array = view.copy()
    finally:
        del view
        # Interrupted mid-copy, a view may live on in the traceback: the
        # mapping is then unmapped when that view goes.
        with contextlib.suppress(BufferError):
            mapping.close()
    return array


def unpack(obj: Any) -> Any:
    """``obj`` with its shared arrays copied back out of their segments."""
    return _walk(obj, _receive)


def gone(pid: int, within: float = 0.0) -> bool:
    """Whether process ``pid`` has exited (a zombie counts), waiting up to ``within`` seconds.

    A process's sockets close before it exits: a peer that sees a
    connection end waits a moment here to learn whether its peer died.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError):  # no pidfd here: the zombie state tells
        deadline = time.monotonic() + within
        while True:
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        return True
            except OSError:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
    try:
        return bool(select.select([pidfd], [], [], within)[0])
    finally:
        os.close(pidfd)


def sweep(pid: int) -> int:
    """Unlink the segments process ``pid`` created, where this user owns them; never raises.

    Returns how many were unlinked. Names of other users, and anything that
    is not a regular file, are left alone.
    """
    prefix = f"{PREFIX}{pid}_"
    try:
        names = [n for n in os.listdir(_SHM_DIR) if n.startswith(prefix)]
    except OSError:
        return 0
    done = 0
    for name in names:
        try:
            info = os.lstat(os.path.join(_SHM_DIR, name))
            if info.st_uid != os.getuid() or not stat.S_ISREG(info.st_mode):
                continue
            _posixshmem.shm_unlink("/" + name)
            done += 1
        except OSError:
            continue
    return done
