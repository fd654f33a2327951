"""SIGKILL of a host, a template or a client at each step: a clear error or the right answer."""

from __future__ import annotations

import os
import random
import select
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import forksafe
from forksafe import testing
from tests.faults.conftest import Tracked, fault_once
from tests.stress.scenarios import count
from tests.support import fakes
from tests.support.fakes import HostProbe
from tests.support.procs import alive, parent_of, shm_segments, wait_gone

pytestmark = pytest.mark.timeout(600)


def _kill_when_written(path: Path, timeout: float = 30.0) -> threading.Thread:
    """A thread that SIGKILLs the pid written to ``path`` as soon as it appears."""

    def run() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                text = path.read_text()
            except FileNotFoundError:
                time.sleep(0.005)
                continue
            if text:
                os.kill(int(text), signal.SIGKILL)
                return

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_host_killed_while_loading(tracked: Tracked, tmp_path: Path) -> None:
    """The host dies inside the model's load: HostCrashedError, then a new host loads."""
    announce, hold = tmp_path / "host.pid", tmp_path / "hold"
    hold.write_text("")
    proxy = tracked.proxy(fakes.SlowToLoad, str(announce), str(hold))
    killer = _kill_when_written(announce)
    with pytest.raises(forksafe.HostCrashedError, match="died during load"):
        proxy.predict(np.ones(2))
    killer.join(30)
    hold.unlink()
    assert not forksafe.info(proxy).loaded  # a failed load is not cached
    np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))


def test_host_killed_while_idle(tracked: Tracked) -> None:
    """Killed between calls: the next call reports it once, the one after is answered."""
    proxy = tracked.proxy()
    host = proxy.pid()
    os.kill(host, signal.SIGKILL)
    assert wait_gone(host)
    with pytest.raises(forksafe.HostCrashedError):
        proxy.predict(np.ones(2))
    np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))


def test_host_killed_at_random_moments_of_large_exchanges(tracked: Tracked) -> None:
    """64 MB each way, the host killed at a random moment: a crash or the exact answer."""
    rng = random.Random(7)
    proxy = tracked.proxy()
    array = np.random.default_rng(1).standard_normal(8 * 1024 * 1024)
    outcomes = {"answered": 0, "crashed": 0}
    for _ in range(count(40, 6)):
        host = proxy.pid()
        timer = threading.Timer(rng.uniform(0.0, 0.6), os.kill, (host, signal.SIGKILL))
        timer.start()
        try:
            back = proxy.echo(array)
        except forksafe.HostCrashedError:
            outcomes["crashed"] += 1
        else:
            assert back.tobytes() == array.tobytes()
            outcomes["answered"] += 1
            timer.join()
            assert wait_gone(host)
            with pytest.raises(forksafe.HostCrashedError):  # killed after it answered
                proxy.pid()
        timer.join()
        assert wait_gone(host)
    print(f"\nSTRESS host_kills_large: {outcomes}")
    assert outcomes["crashed"], "no kill landed during an exchange"


def test_template_killed_while_idle(tracked: Tracked) -> None:
    """The tree's template is killed: live hosts keep answering, new ones come from a new one."""
    proxy = tracked.proxy()
    template = parent_of(proxy.pid())
    os.kill(template, signal.SIGKILL)
    assert wait_gone(template)
    assert proxy.value == 42  # its host outlives the template
    fresh = tracked.proxy()
    renewed = parent_of(fresh.pid())
    assert renewed not in (template, 0)
    tracked.template = renewed


def test_template_killed_while_a_host_loads(tracked: Tracked, tmp_path: Path) -> None:
    """The template dies while its new host loads: that host still answers."""
    announce, hold = tmp_path / "host.pid", tmp_path / "hold"
    proxy = tracked.proxy(fakes.SlowToLoad, str(announce), str(hold))
    hold.write_text("")
    template = tracked.template
    done: list[object] = []
    caller = threading.Thread(target=lambda: done.append(proxy.predict(np.ones(2))))
    caller.start()
    deadline = time.monotonic() + 30
    while not announce.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(template, signal.SIGKILL)
    assert wait_gone(template)
    hold.unlink()
    caller.join(60)
    np.testing.assert_array_equal(done[0], np.full(2, 2.0))  # type: ignore[arg-type]
    tracked.template = parent_of(tracked.proxy().pid())


def test_template_killed_during_the_handshake(tracked: Tracked) -> None:
    """Killed as a client connects: that host answers, or the next template does."""
    proxy = tracked.proxy()
    template = tracked.template
    with fault_once("client.handshake", lambda: os.kill(template, signal.SIGKILL)) as hits:
        np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
    assert hits == [1]
    assert wait_gone(template)
    tracked.template = parent_of(tracked.proxy().pid())


@pytest.mark.parametrize("moment", ["during a call", "between calls"])
def test_client_killed(moment: str, tmp_path: Path) -> None:
    """A fork child client SIGKILLed: its host exits and its segments are swept."""
    inside = str(tmp_path / "inside")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
            big = np.ones(2 * 1024 * 1024)
            proxy.echo(big)
            os.write(write_fd, str(proxy.pid()).encode())
            if moment == "during a call":
                proxy.hold(big, 60.0, inside)
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        assert select.select([read_fd], [], [], 60)[0], "the client child never got going"
        host = int(os.read(read_fd, 32))
        if moment == "during a call":  # killed once the host runs the call, not before
            assert testing.wait_until(lambda: os.path.exists(inside), 30), "no call began"
        mine = {n for n in shm_segments() if n.startswith(f"forksafe_{pid}_")}
        assert mine
    finally:
        os.close(read_fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert wait_gone(host), f"host {host} outlived its killed client"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and mine & shm_segments():
        time.sleep(0.05)
    assert not mine & shm_segments()
    assert not any(n.startswith(f"forksafe_{host}_") for n in shm_segments())
    assert not alive(host)
