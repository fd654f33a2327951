"""What the tests read about processes and shared memory: /proc, forksafe's segments, templates.

One place for these, so every test reads a process the same way (a process
reaped between opening and reading its file counts as gone), and every wait
here is bounded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from typing import Any

from forksafe import testing
from forksafe.testing import _TEMPLATE_MARK, _forksafe_processes

__all__ = [
    "alive",
    "carrying",
    "children_of",
    "parent_of",
    "pss_kb",
    "rss_kb",
    "segments_back_to",
    "shm_segments",
    "stop_group",
    "templates",
    "wait_gone",
]

# Every process this run (this pytest-xdist worker) starts by exec inherits it,
# templates and their hosts included; its fork children are its descendants.
# Kept where inherited from this worker; made anew in a worker (not the controller's).
_RUN = "FORKSAFE_TEST_RUN"
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if not os.environ.get(_RUN, "").startswith(f"{_WORKER}:"):
    os.environ[_RUN] = f"{_WORKER}:{uuid.uuid4().hex}"
_RUN_ENTRY = f"{_RUN}={os.environ[_RUN]}".encode()


def _of_another_run(pid: int, ours: set[int]) -> bool:
    """``pid`` is alive and was started by another test run or worker (or application)."""
    if pid in ours:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return _RUN_ENTRY not in f.read().split(b"\0")
    except OSError:  # gone: a leak of ours, unless its owner sweeps it meanwhile
        return False


def shm_segments() -> set[str]:
    """forksafe's segments that exist now, but those of live processes of other runs.

    Tests run beside one another (pytest-xdist) and beside other applications:
    what their processes make is not this test's.
    """
    ours = testing.process_tree({os.getpid()})
    return {
        name
        for name in testing.shm_segments()
        if (pid := testing.segment_creator(name)) is None or not _of_another_run(pid, ours)
    }


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name, or ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or the read
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def terminate(pid: int) -> None:
    """SIGTERM ``pid`` if it still runs (a shared host may have left on its own, idle)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def parent_of(pid: int) -> int:
    """The parent pid of ``pid`` (0 if it is gone)."""
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else 0


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """Wait, bounded, for ``pid`` to exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return not alive(pid)


def segments_back_to(
    before: set[str], timeout: float = 10.0, *, of_live: tuple[int, ...] = ()
) -> set[str]:
    """Wait, bounded, until no segment beyond ``before`` exists; return what is left.

    Segments created by the processes ``of_live`` (live hosts keep a pool of
    their own) do not count.
    """
    owners = tuple(f"forksafe_{pid}_" for pid in of_live)

    def left() -> set[str]:
        return {n for n in shm_segments() - before if not (owners and n.startswith(owners))}

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and left():
        time.sleep(0.02)
    return left()


def templates() -> set[int]:
    """Pids of live forksafe host templates (not their hosts) on this machine."""
    marked = _forksafe_processes()
    return {pid for pid, parent in marked.items() if parent not in marked}


def carrying(marker: str) -> dict[int, str]:
    """Live processes whose environment holds ``marker``, each with its role.

    Roles: ``"template"`` and ``"host"`` (forksafe's, which inherit their
    creator's environment) or ``"process"``.
    """
    needle = marker.encode()
    found: dict[int, str] = {}
    forksafes: set[int] | None = None  # read once, when a template is met
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                templated = _TEMPLATE_MARK in f.read()
        except OSError:
            continue
        fields = _stat(int(entry))
        if fields is None or fields[0] == "Z":
            continue
        role = "process"
        if templated:
            forksafes = set(_forksafe_processes()) if forksafes is None else forksafes
            role = "host" if int(fields[1]) in forksafes else "template"
        found[int(entry)] = role
    return found


def _status_kb(pid: int, field: str, path: str) -> int | None:
    try:
        with open(f"/proc/{pid}/{path}", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kb(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB."""
    return _status_kb(pid, "VmRSS:", "status")


def pss_kb(pid: int) -> int | None:
    """Proportional set size of ``pid`` in KiB (shared pages split among their users)."""
    return _status_kb(pid, "Pss:", "smaps_rollup")


def stop_group(process: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop ``process`` and its whole process group (``start_new_session``): TERM, then KILL.

    Bounded: ``grace`` seconds per signal; the group is killed even after its
    leader exits, since children outliving their parent still belong to it.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
            # Children outliving their parent still belong to the group.
            os.killpg(process.pid, signal.SIGKILL)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
        break
    if process.poll() is None:
        process.kill()
        process.wait(10)
