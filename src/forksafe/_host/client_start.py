"""Client side: starting a template or a shared host, detached, with a real Python.

Both are started as ``PYTHON -I -c COMMAND CONFIG_FD REPORT_FD``: isolated
(``-I`` ignores the environment's ``PYTHON*`` variables and the working
directory), given the client's ``sys.path`` explicitly in the config. Under
an embedded interpreter (uWSGI, mod_wsgi, a PyInstaller-like launcher)
``sys.executable`` is the server's binary, not Python: the interpreter is
then found from the environment's prefix, or named by ``FORKSAFE_PYTHON``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from forksafe._errors import HostError, HostTimeoutError
from forksafe._host.wire import command

__all__ = ["PYTHON_VARIABLE", "python", "start_detached"]

PYTHON_VARIABLE = "FORKSAFE_PYTHON"
# python, python3, python3.11, python3.13t, pypy3 ...: names an interpreter has.
_PYTHON_NAME = re.compile(r"(python|pypy)(\d+(\.\d+)?)?[a-z]?")


def _executable(path: str | None) -> bool:
    return bool(path) and os.path.isfile(str(path)) and os.access(str(path), os.X_OK)


def _candidates() -> list[str]:
    """Interpreters of this environment, best first (the running one, if it is one)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = []
    if _PYTHON_NAME.fullmatch(os.path.basename(sys.executable or "")):
        found.append(sys.executable)
    for prefix in dict.fromkeys((sys.prefix, sys.exec_prefix)):
        for name in (f"python{version}", f"python{sys.version_info.major}", "python"):
            found.append(os.path.join(prefix, "bin", name))
    base = getattr(sys, "_base_executable", None)
    if base and _PYTHON_NAME.fullmatch(os.path.basename(base)):
        found.append(base)
    return found


@functools.cache
def _discovered() -> str | None:
    return next((path for path in _candidates() if _executable(path)), None)


def python() -> str:
    """The Python interpreter hosts start with: ``FORKSAFE_PYTHON``, else this environment's.

    Raises:
        HostError: ``FORKSAFE_PYTHON`` names no executable, or none was found.
    """
    chosen = os.environ.get(PYTHON_VARIABLE)
    if chosen:
        if not _executable(chosen):
            raise HostError(
                f"{PYTHON_VARIABLE}={chosen!r} is not an executable file; set it to the Python "
                "interpreter of this environment (for example <venv>/bin/python)"
            )
        return chosen
    found = _discovered()
    if found is None:
        raise HostError(
            f"cannot start a model host: this process runs in {sys.executable!r}, which is "
            f"not a Python interpreter, and none was found in {sys.prefix!r}; set "
            f"{PYTHON_VARIABLE} to the Python interpreter of this environment"
        )
    return found


def start_detached(
    module: str,
    config: dict[str, Any],
    *,
    keep_fds: tuple[int, ...] = (),
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Start ``forksafe._host.<module>.main()``, hand it ``config``, return its report.

    The child detaches (forks and exits its first process, which is reaped
    here at once) and reports on the second pipe; every wait is bounded by
    ``timeout``, and a child that does not report in time is killed.
    ``keep_fds`` are descriptors the child inherits (a lock it keeps).
    """
    interpreter = python()
    config_r, config_w = os.pipe()
    report_r, report_w = os.pipe()
    try:
        process = subprocess.Popen(
            [interpreter, "-I", "-c", command(module), str(config_r), str(report_w)],
            stdin=subprocess.DEVNULL,
            pass_fds=(config_r, report_w, *keep_fds),
        )
    except OSError as exc:
        raise HostError(f"cannot start {what} with {interpreter!r}: {exc}") from exc
    finally:
        os.close(config_r)
        os.close(report_w)
    writer = Connection(config_w, readable=False)
    reader = Connection(report_r, writable=False)
    try:
        with contextlib.suppress(OSError):  # it exited without reading: the report says how
            writer.send(config)
        writer.close()
        process.wait(timeout)  # the first process exits as soon as the child detaches
        if not reader.poll(timeout):
            raise HostTimeoutError(f"{what} did not start within {timeout} s")
        report: dict[str, Any] = reader.recv()
        if report.get("bound", True):  # a template that lost a race to a sibling starts nothing
            logging.getLogger("forksafe.host").info("started %s: pid %s", what, report["pid"])
        return report
    except subprocess.TimeoutExpired:
        raise HostTimeoutError(f"{what} did not start within {timeout} s") from None
    except EOFError:
        raise HostError(
            f"{what} exited before it started (exit status {process.returncode}) under "
            f"{interpreter!r}; its error, if any, is on this process's standard error. If "
            f"that is not a Python interpreter, set {PYTHON_VARIABLE}"
        ) from None
    finally:
        writer.close()
        reader.close()
        if process.returncode is None:
            process.kill()
            process.wait()
