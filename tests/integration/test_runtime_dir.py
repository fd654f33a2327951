"""Where shared hosts live: a directory no other user can take from this one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.support.children import run_python
from tests.support.procs import terminate

pytestmark = pytest.mark.timeout(300)
NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="platform: needs root to create another user's directory"
)

_CLIENT = """
import os, numpy as np, forksafe
from tests.support.fakes import Recorder
proxy = forksafe.lazy_model(Recorder, {tag!r}, isolation="shared", timeout=60)
assert proxy.predict(np.ones(2)).tolist() == [3.0, 3.0]
info = forksafe.info(proxy)
print(info.host_pid, info.host_log)
"""


def _machine(tmp_path: Path) -> dict[str, str]:
    """An environment with its own temp directory and home, and no XDG_RUNTIME_DIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    home = tmp_path / "home"
    home.mkdir()
    return {"TMPDIR": str(tmp), "HOME": str(home), "XDG_RUNTIME_DIR": "", "XDG_CACHE_HOME": ""}


def _stop(host: str) -> None:
    terminate(int(host))


@needs_root
def test_a_directory_squatted_by_another_user_does_not_deny_the_shared_mode(
    tmp_path: Path,
) -> None:
    """Another user made forksafe-<uid> in the temp directory first: the shared mode works.

    Two unrelated processes still find one shared host, in a private
    directory of this user's, the same for both.
    """
    env = _machine(tmp_path)
    squat = Path(env["TMPDIR"]) / f"forksafe-{os.getuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, NOBODY, NOBODY)
    code = _CLIENT.format(tag=tmp_path.name)
    first = run_python(code, **env).split()
    try:
        second = run_python(code, **env).split()
        assert first == second  # one host, one log: the fallback is deterministic
        log = Path(first[1])
        assert squat not in log.parents
        directory = log.parent
        info = directory.stat()
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    finally:
        _stop(first[0])


def test_an_explicit_runtime_directory_is_used(tmp_path: Path) -> None:
    """FORKSAFE_RUNTIME_DIR names where the sockets, locks and logs go (made 0700 if new)."""
    env = _machine(tmp_path)
    chosen = tmp_path / "run"
    host, log = run_python(
        _CLIENT.format(tag=tmp_path.name), FORKSAFE_RUNTIME_DIR=str(chosen), **env
    ).split()
    try:
        assert Path(log).parent == chosen
        assert stat.S_IMODE(chosen.stat().st_mode) == 0o700
    finally:
        _stop(host)


@needs_root
def test_when_no_directory_can_be_had_the_error_names_the_setting(tmp_path: Path) -> None:
    """The temp directory squatted and no usable home: HostError naming FORKSAFE_RUNTIME_DIR."""
    env = _machine(tmp_path)
    squat = Path(env["TMPDIR"]) / f"forksafe-{os.getuid()}"
    squat.mkdir(mode=0o777)
    os.chown(squat, NOBODY, NOBODY)
    env["HOME"] = str(tmp_path / "no-such-home" / "file")
    (tmp_path / "no-such-home").write_text("not a directory")
    code = """
    import numpy as np, forksafe
    from tests.support.fakes import Recorder
    proxy = forksafe.lazy_model(Recorder, "x", isolation="shared", timeout=30)
    try:
        proxy.predict(np.ones(2))
    except forksafe.HostError as exc:
        print(type(exc).__name__, "|", exc)
    """
    out = run_python(code, **env)
    assert out.startswith("HostError |"), out
    assert "FORKSAFE_RUNTIME_DIR" in out and str(squat) in out
