"""Hosts start with a real Python when ``sys.executable`` is not one (uWSGI, mod_wsgi, launchers).

Under an embedded interpreter ``sys.executable`` is the server's own binary.
These tests set it to such a binary in a fresh interpreter, exactly the state
a uWSGI worker is in (tests/integration/test_uwsgi.py runs uWSGI itself).
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.children import run_python

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The state of an embedded interpreter: sys.executable is the server's binary.
_EMBEDDED = """
import os, sys, uuid
import numpy as np
import forksafe
from tests.support.fakes import Recorder
sys.executable = {binary!r}
proxy = forksafe.lazy_model(Recorder, uuid.uuid4().hex, isolation={isolation!r}, timeout=60)
try:
    print(proxy.predict(np.arange(3.0)).tolist())
    print(forksafe.info(proxy).host_pid != os.getpid())
finally:
    if {isolation!r} == "shared":
        from tests.host_scenarios import stop_shared
        stop_shared(proxy)
"""


@pytest.mark.parametrize("isolation", ["process", "shared"])
def test_a_host_starts_when_sys_executable_is_a_server_binary(isolation: str) -> None:
    """With sys.executable a non-Python binary, hosts start with this environment's Python."""
    binary = shutil.which("true") or "/bin/true"
    out = run_python(_EMBEDDED.format(binary=binary, isolation=isolation), timeout=120)
    assert out.splitlines() == ["[1.0, 3.0, 5.0]", "True"]


def test_an_explicit_interpreter_that_is_not_there_is_named_in_the_error() -> None:
    """FORKSAFE_PYTHON pointing nowhere: a HostError naming the setting, not an OSError."""
    code = """
    import numpy as np
    import forksafe
    from tests.support.fakes import HostProbe
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    try:
        proxy.predict(np.ones(2))
    except forksafe.HostError as exc:
        print(type(exc).__name__, "|", exc)
    """
    out = run_python(code, FORKSAFE_PYTHON="/nonexistent/python3")
    kind, _, message = out.partition(" | ")
    assert kind == "HostError", out
    assert "FORKSAFE_PYTHON" in message and "/nonexistent/python3" in message


def test_a_host_interpreter_that_fails_to_start_is_a_host_error() -> None:
    """An interpreter that exits at once (as uwsgi does given -I -c): HostError, not EOFError."""
    code = """
    import numpy as np
    import forksafe
    from tests.support.fakes import HostProbe
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    try:
        proxy.predict(np.ones(2))
    except forksafe.HostError as exc:
        print(type(exc).__name__, "|", exc)
    """
    false = shutil.which("false") or "/bin/false"
    out = run_python(code, FORKSAFE_PYTHON=false)
    kind, _, message = out.partition(" | ")
    assert kind == "HostError", out
    assert false in message and "exit" in message
