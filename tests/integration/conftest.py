"""Fixtures the host tests share."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

import forksafe
from tests.support.fakes import HostProbe
from tests.support.procs import segments_back_to, shm_segments, wait_gone


@pytest.fixture
def probe() -> Iterator[forksafe.ModelProxy]:
    """A process-isolated HostProbe; no segment may be left after the test.

    pytest holds fixture values until teardown ends, so the host is stopped
    here by pid; ``test_host_exits_when_its_proxy_is_collected`` covers
    collection.
    """
    before = shm_segments()
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    yield proxy
    pid = forksafe.info(proxy).host_pid
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
    # The template sweeps a killed host's segments; this side's pool holds only
    # what the last calls needed.
    assert segments_back_to(before) <= set(proxy.__wrapped__._client.segment_names())
