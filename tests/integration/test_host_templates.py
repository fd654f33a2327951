"""Host templates: one per process tree, isolated, hard to stall, hijack or break."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import forksafe
from forksafe._host import client_private as host_tree
from tests import host_scenarios
from tests.models import Models
from tests.support.children import run_clean, run_python
from tests.support.fakes import HostProbe
from tests.support.procs import parent_of, segments_back_to, shm_segments, wait_gone

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534


def _address() -> str:
    """This process tree's template address."""
    templates_ = host_tree._templates
    assert templates_ is not None, "no host was started in this process yet"
    return templates_.address


def _template_of(proxy: forksafe.ModelProxy) -> int:
    host = forksafe.info(proxy).host_pid
    assert host is not None
    return parent_of(host)


@pytest.mark.parametrize("parent_hosts", [False, True], ids=["workers-start-it", "parent-started"])
def test_one_template_serves_a_poisoned_pool(models: Models, parent_hosts: bool) -> None:
    """Four workers of a poisoned parent, racing to their first call: one template serves all.

    With ``parent-started``, the parent's own template serves the workers too.
    """
    result = run_clean(
        host_scenarios.pool_of_poisoned_workers, models, 4, parent_hosts, spawn=True, timeout=240
    ).get()
    _, reference = models.reference()
    served_by = {w["template"] for w in result["workers"]}
    for worker in result["workers"]:
        np.testing.assert_allclose(worker["y"], reference, atol=1e-5)
    assert len({w["host"] for w in result["workers"]}) == 4  # a host each
    assert len(served_by) == 1, served_by
    assert served_by.isdisjoint({w["pid"] for w in result["workers"]} | {result["parent_pid"]})
    if parent_hosts:
        assert served_by == {result["parent_template"]}
    (template,) = served_by
    assert wait_gone(template, 15), "the template outlived its tree"


def _client_script(tmp_path: Path, code: str) -> Path:
    script = tmp_path / "client.py"
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(code))
    return script


def test_template_runs_nothing_from_the_working_directory(tmp_path: Path) -> None:
    """A planted ``inspect.py`` in the client's working directory never runs in the template."""
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "inspect.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    script = _client_script(
        tmp_path,
        """
        import forksafe
        from tests.support.fakes import HostProbe
        print(forksafe.lazy_model(HostProbe, isolation="process", timeout=60).value)
        """,
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=planted,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "42"
    assert not marker.exists(), "a module from the working directory ran"


def test_a_silent_connection_does_not_stall_new_hosts() -> None:
    """A same-user connection that never speaks: a new host still starts at once."""
    first = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    assert first.value == 42
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(_address())
    try:
        start = time.monotonic()
        second = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        assert second.value == 42
        # The handshake deadline is 10 s; a stalled accept loop would wait it out.
        assert time.monotonic() - start < 5.0
    finally:
        silent.close()


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to act as another user (uid 65534)"
)


@needs_root
def test_another_users_squatter_on_a_dead_templates_address_is_not_trusted() -> None:
    """Template killed, its address bound by uid 65534: the client renews and answers."""
    code = f"""
        import os, select, signal, socket
        import forksafe
        from forksafe._host import client_private as client
        from tests.support.procs import parent_of, wait_gone
        from tests.support.fakes import HostProbe
        first = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        template = parent_of(first.pid())
        address = client._templates.address
        os.kill(template, signal.SIGKILL)
        assert wait_gone(template, 10)
        ready_r, ready_w = os.pipe()
        squatter = os.fork()
        if squatter == 0:  # another user binds the free address and challenges all comers
            try:
                os.setgid({NOBODY})
                os.setuid({NOBODY})
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(address)
                listener.listen(8)
                os.write(ready_w, b"r")
                while True:
                    conn, _ = listener.accept()
                    conn.sendall(b"\\x00\\x00\\x00\\x20#CHALLENGE#" + b"x" * 21)
            finally:
                os._exit(0)
        try:
            assert select.select([ready_r], [], [], 30)[0], "the squatter never bound"
            second = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
            print(second.value, client._templates.address != address)
        finally:
            os.kill(squatter, signal.SIGKILL)
            os.waitpid(squatter, 0)
    """
    assert run_python(code, timeout=120).split() == ["42", "True"]


def _plant(name: str, *, directory: bool, owner: int | None) -> Path:
    path = Path("/dev/shm") / name
    if directory:
        path.mkdir()
    else:
        path.write_bytes(b"planted")
    if owner is not None:
        os.chown(path, owner, owner)
    return path


def test_planted_names_in_shared_memory_do_not_break_the_reaper() -> None:
    """Names planted for a host's pid are left alone; later killed hosts are still reaped.

    The planted names: a directory, and (as root) a file of another user.
    """
    before = shm_segments()
    victim = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    host = victim.pid()
    planted = [_plant(f"forksafe_{host}_planted_dir", directory=True, owner=None)]
    if os.geteuid() == 0:
        planted.append(_plant(f"forksafe_{host}_planted_file", directory=False, owner=NOBODY))
    try:
        os.kill(host, signal.SIGKILL)
        assert wait_gone(host)
        other = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        big = np.ones(2 * 1024 * 1024)  # a segment on each side
        assert other.echo(big).shape == big.shape
        second = forksafe.info(other).host_pid
        assert second is not None
        os.kill(second, signal.SIGKILL)
        assert wait_gone(second), f"killed host {second} was never reaped"
        for path in planted:
            assert path.exists(), f"{path} is not forksafe's and must be left alone"
        pool = set(other.__wrapped__._client.segment_names())
        assert segments_back_to(before | {p.name for p in planted}) <= pool
    finally:
        for path in planted:
            if path.is_dir():
                path.rmdir()
            elif path.exists():
                path.unlink()


def test_a_killed_fork_child_clients_segments_are_swept() -> None:
    """A fork child that used a host is SIGKILLed: its shared-memory segments do not outlive it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
            proxy.echo(np.ones(2 * 1024 * 1024))  # leaves a segment in this client's pool
            os.write(write_fd, b"ready")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        ready = select.select([read_fd], [], [], 60)[0]
        assert ready and os.read(read_fd, 16) == b"ready", "the client child never got going"
        mine = {name for name in shm_segments() if name.startswith(f"forksafe_{pid}_")}
        assert mine, "the child's segment was not there to begin with"
    finally:
        os.close(read_fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and mine & shm_segments():
        time.sleep(0.05)
    assert not mine & shm_segments(), "a killed client's segments leaked"
