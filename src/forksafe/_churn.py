"""Fork per job: one model loaded again and again by short-lived fork children of one parent.

RQ's work horse, Celery's ``--max-tasks-per-child 1`` and gunicorn's
``--max-requests`` fork a child that lives for one job (or a few): each child
imports the framework and loads the model again. Each in-process load in a
fork child is recorded in a small file shared by the children of the same
parent; when at least ``THRESHOLD`` loads of one source fall within
``WINDOW_S`` seconds and all but the newest came from children that have
already exited (a pool starting its workers at once never counts), the
newest child warns once for that parent and source, naming
``isolation="shared"``.

Runs only at load time, never on the call path. Every wait is bounded (the
file lock is tried for at most ``_LOCK_WAIT_S``), every read is capped, and
any failure (no ``/proc``, a full disk, a lock held too long) skips the check
silently: it is advice, never a reason to fail a load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time

from forksafe import _forking
from forksafe._errors import ForkSafeWarning, warn

__all__ = ["THRESHOLD", "WINDOW_S", "note_load"]

THRESHOLD = 5  # loads of one source by children of one parent ...
WINDOW_S = 60.0  # ... within this many seconds
GUIDE = "Servers and queues: worker recycling and fork per job (docs/guides/recycling.md)"
_LOCK_WAIT_S = 0.05
_MAX_BYTES = 16384  # a record file is rewritten whole and never grows past this
_MAX_SWEEP = 16  # records of exited parents removed per load, at most
_PREFIX = "churn-"


def _start_time(pid: int) -> str | None:
    """``pid``'s start time in clock ticks (tells a reused pid apart); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read(1024).rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):  # exited, not yet reaped: gone
        return None
    return fields[19]


def _alive(pid: int, started: str) -> bool:
    return _start_time(pid) == started


def _directory() -> str | None:
    """This user's private directory for the records, or None if there is none to trust."""
    directory = os.path.join(tempfile.gettempdir(), f"forksafe-{os.getuid()}-churn")
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    info = os.lstat(directory)
    if info.st_uid != os.getuid() or (info.st_mode & 0o777) != 0o700 or os.path.islink(directory):
        return None
    return directory


def _locked(fd: int) -> bool:
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)


def _update(path: str, me: str, now: float) -> int | None:
    """Add this load to the record at ``path``; the count to warn with, once, or None."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not _locked(fd):
            return None
        lines = os.read(fd, _MAX_BYTES).decode("ascii", errors="replace").splitlines()
        warned = "warned" in lines
        loads = [line.split() for line in lines if line.count(" ") == 2]
        loads = [row for row in loads if _fresh(row, now)]
        gone = sum(1 for pid, started, _ in loads if not _alive(int(pid), started))
        loads.append(me.split())
        fire = not warned and len(loads) >= THRESHOLD and gone >= THRESHOLD - 1
        rows = [" ".join(row) for row in loads[-(THRESHOLD * 8) :]]
        data = "\n".join([*(["warned"] if warned or fire else []), *rows, ""]).encode()
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, data[:_MAX_BYTES])
        return len(loads) if fire else None
    finally:
        os.close(fd)  # releases the lock


def _fresh(row: list[str], now: float) -> bool:
    try:
        return row[0].isdigit() and now - float(row[2]) <= WINDOW_S
    except ValueError:
        return False


def _sweep(directory: str) -> None:
    """Remove the records of parents that have exited (a few per call: bounded)."""
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            parts = entry.name.split("-")
            if len(parts) != 4 or parts[0] + "-" != _PREFIX or not parts[1].isdigit():
                continue
            if not _alive(int(parts[1]), parts[2]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed += 1
                if removed >= _MAX_SWEEP:
                    return


def note_load(what: str) -> None:
    """After an in-process load of ``what`` in this process: warn if it is the fifth in a row."""
    if _forking.generation == 0:
        return  # not a fork child: nothing forked it for a job
    parent = os.getppid()
    parent_started, my_started = _start_time(parent), _start_time(os.getpid())
    if parent <= 1 or parent_started is None or my_started is None:
        return  # orphaned, or no /proc to tell exited children from live ones
    try:
        directory = _directory()
        if directory is None:
            return
        _sweep(directory)
        digest = hashlib.sha256(what.encode()).hexdigest()[:16]
        path = os.path.join(directory, f"{_PREFIX}{parent}-{parent_started}-{digest}")
        count = _update(path, f"{os.getpid()} {my_started} {time.time():.3f}", time.time())
    except OSError:
        return
    if count is None:
        return
    # Advice only: a filter that turns warnings into errors must not fail the load.
    with contextlib.suppress(ForkSafeWarning):
        warn(
            f"model {what!r} was loaded in-process by {count} fork children of process "
            f"{parent} within {WINDOW_S:.0f} s, each living for a job or a few (a fork per job "
            "or per request: RQ's work horse, Celery --max-tasks-per-child, gunicorn "
            "--max-requests): each child imports the framework and loads the model again. "
            "Pass isolation='shared' to load it once for all of them (each job then makes "
            f"its calls to that one host), or run jobs in long-lived workers; see {GUIDE}."
        )
