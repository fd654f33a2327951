"""Where this user's shared hosts keep their sockets, start locks and logs.

A directory of this user's alone (mode 0700, owned by this uid, not a
symlink), the first of these that can be had, so that every process of the
user with the same environment finds the same one:

1. ``FORKSAFE_RUNTIME_DIR``, when set (an error if it cannot be used);
2. ``$XDG_RUNTIME_DIR/forksafe``, where the session has one;
3. ``forksafe-<uid>`` in the temp directory;
4. ``forksafe`` in ``$XDG_CACHE_HOME`` (else ``~/.cache``): no other user
   can create a directory there first, so a squatter on the temp
   directory's name cannot deny the shared mode.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile

from forksafe._errors import HostError

__all__ = ["RUNTIME_DIR_VARIABLE", "runtime_dir"]

RUNTIME_DIR_VARIABLE = "FORKSAFE_RUNTIME_DIR"


def _usable(directory: str, *, parents: bool) -> str | None:
    """Why ``directory`` cannot hold sockets for this user only, or ``None`` once it can."""
    try:
        if parents:
            os.makedirs(os.path.dirname(directory) or ".", exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        info = os.lstat(directory)
    except OSError as exc:
        return f"{exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return "it is not a directory (a symlink or a file)"
    if info.st_uid != os.getuid():
        return f"it belongs to uid {info.st_uid}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:  # others could have planted files in it: never trusted
        return f"its mode is {mode:o}, not 700 (remove it, and forksafe makes it anew)"
    if mode != 0o700:
        try:
            os.chmod(directory, 0o700)  # ours and closed to others: usable again
        except OSError as exc:
            return f"its mode is {mode:o} and cannot be made 700: {exc}"
    return None


def _candidates() -> list[tuple[str, bool]]:
    """(directory, make its parents) in order of preference."""
    found = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.stat(runtime).st_uid == os.getuid():
        found.append((os.path.join(runtime, "forksafe"), False))
    found.append((os.path.join(tempfile.gettempdir(), f"forksafe-{os.getuid()}"), False))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    found.append((os.path.join(cache, "forksafe"), True))
    return found


def runtime_dir() -> str:
    """This user's private directory for shared hosts (made if need be).

    Raises:
        HostError: ``FORKSAFE_RUNTIME_DIR`` cannot be used, or none of the
            places above can; the message says why for each.
    """
    chosen = os.environ.get(RUNTIME_DIR_VARIABLE)
    if chosen:
        problem = _usable(chosen, parents=True)
        if problem is not None:
            raise HostError(f"{RUNTIME_DIR_VARIABLE}={chosen!r} cannot be used: {problem}")
        return chosen
    problems = []
    for directory, parents in _candidates():
        problem = _usable(directory, parents=parents)
        if problem is None:
            return directory
        problems.append(f"{directory}: {problem}")
    raise HostError(
        "no private directory for shared model hosts could be had ("
        + "; ".join(problems)
        + f"); set {RUNTIME_DIR_VARIABLE} to a directory of this user's"
    )
