"""``forksafe hosts``: operators see this user's shared hosts and stop them, as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.host_scenarios import stop_shared
from tests.support.fakes import Recorder
from tests.support.procs import alive, wait_gone

pytestmark = pytest.mark.timeout(300)


def forksafe_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m forksafe ARGS``, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "forksafe", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def two_hosts(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[forksafe.ModelProxy]]:
    """Two shared hosts in a runtime directory of this test's own, one busier than the other.

    Its own directory: ``hosts stop --all`` must not stop other tests' hosts (or the
    hosts of anything else this user runs), and the listing shows only these.
    """
    monkeypatch.setenv("FORKSAFE_RUNTIME_DIR", str(tmp_path_factory.mktemp("run")))
    proxies = [
        forksafe.lazy_model(Recorder, uuid.uuid4().hex, isolation="shared", timeout=60)
        for _ in range(2)
    ]
    yield proxies
    for proxy in proxies:
        pid = forksafe.info(proxy).host_pid
        if pid is not None and alive(pid):
            stop_shared(proxy)


def _listed(hosts: list[dict[str, Any]], pid: int | None) -> dict[str, Any]:
    matching = [h for h in hosts if h["pid"] == pid]
    assert len(matching) == 1, (pid, [h["pid"] for h in hosts])
    return matching[0]


def test_hosts_lists_each_shared_host_with_its_figures(
    two_hosts: list[forksafe.ModelProxy],
) -> None:
    """Calls, batches, clients, waits, memory, log: what each host did, as JSON and a table."""
    busy, idle = two_hosts
    idle.pid()
    threads = [
        threading.Thread(target=lambda: [busy.predict(np.ones((2, 3))) for _ in range(10)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    result = forksafe_cli("hosts", "--json")
    assert result.returncode == 0, result.stderr
    hosts = json.loads(result.stdout)
    seen = _listed(hosts, forksafe.info(busy).host_pid)
    assert seen["calls"] == 40 and seen["state"] == "serving"
    assert 1 <= seen["batches"] <= 40 and seen["mean_rows_per_batch"] >= 2.0
    assert seen["clients"] >= 1 and seen["pss_kb"] > 0 and os.path.exists(seen["log"])
    assert seen["source"] == "Recorder()" and seen["queue_wait_p99_ms"] >= 0
    assert _listed(hosts, forksafe.info(idle).host_pid)["calls"] == 1
    assert forksafe.info(busy).host is None  # info() asks the host only when told to
    through_info = forksafe.info(busy, host=True).host
    assert through_info is not None
    changing = ("uptime_s", "pss_kb")  # the rest is the same figure either way
    assert {k: v for k, v in through_info.items() if k not in changing} == {
        k: v for k, v in seen.items() if k not in changing
    }
    table = forksafe_cli("hosts")
    assert str(seen["pid"]) in table.stdout and seen["log"] in table.stdout


def test_hosts_stop_stops_one_host_cleanly_and_refuses_other_pids(
    two_hosts: list[forksafe.ModelProxy],
) -> None:
    """stop PID: that host exits (socket and lock gone); a pid that is no host is left alone."""
    first, second = two_hosts
    target, other = first.pid(), second.pid()
    log = forksafe.info(first).host_log
    assert log is not None
    result = forksafe_cli("hosts", "stop", str(target))
    assert result.returncode == 0, result.stdout + result.stderr
    assert wait_gone(target) and alive(other)
    base = log.removesuffix(".log")
    assert not os.path.exists(f"{base}.sock") and not os.path.exists(f"{base}.lock")
    refused = forksafe_cli("hosts", "stop", str(os.getpid()))
    assert refused.returncode == 1 and "not a shared model host" in refused.stdout
    with pytest.raises(forksafe.HostCrashedError):
        first.pid()  # its client hears of it once, as after a crash
    assert first.pid() != target


def test_hosts_stop_all(two_hosts: list[forksafe.ModelProxy]) -> None:
    """stop --all: every shared host of this user goes."""
    pids = [proxy.pid() for proxy in two_hosts]
    result = forksafe_cli("hosts", "stop", "--all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(wait_gone(pid) for pid in pids)
    listed = json.loads(forksafe_cli("hosts", "--json").stdout)
    assert not {h["pid"] for h in listed} & set(pids)
