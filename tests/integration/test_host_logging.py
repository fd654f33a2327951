"""The ``forksafe.host`` logger says when hosts start, clients connect, and hosts fail."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

import forksafe
from tests.support.fakes import HostProbe
from tests.support.procs import wait_gone

pytestmark = pytest.mark.timeout(300)


def test_connects_and_crashes_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """INFO when a client reaches its host (naming its pid), WARNING when the host died."""
    caplog.set_level(logging.INFO, logger="forksafe.host")
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
    host = forksafe.info(proxy).host_pid
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"connected to a private model host {host} (tests.support.fakes.HostProbe)" in infos
    os.kill(host, signal.SIGKILL)
    assert wait_gone(host)
    with pytest.raises(forksafe.HostCrashedError):
        proxy.predict(np.ones(2))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"model host {host} died during predict" in warnings
