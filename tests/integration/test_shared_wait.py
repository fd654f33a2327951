"""A shared host with max_wait_ms=0: it waits for nobody, but joins the calls already queued."""

from __future__ import annotations

import os
import threading
import time
import uuid

import numpy as np
import pytest

import forksafe
from tests.host_scenarios import stop_shared
from tests.support.fakes import Recorder

pytestmark = pytest.mark.timeout(120)


def test_max_wait_0_joins_the_calls_already_waiting() -> None:
    """Six calls queued behind a slow one run as one joined call, not six."""
    proxy = forksafe.lazy_model(
        Recorder, uuid.uuid4().hex, 0.3, isolation="shared", max_wait_ms=0, timeout=30
    )
    proxy.pid()
    try:
        first = threading.Thread(target=proxy.predict, args=(np.ones((1, 3)),))
        first.start()
        time.sleep(0.1)  # the first call is running: the others queue behind it
        rest = [threading.Thread(target=proxy.predict, args=(np.ones((1, 3)),)) for _ in range(6)]
        for thread in rest:
            thread.start()
        for thread in [first, *rest]:
            thread.join(60)
        seen = proxy.rows_seen()
        assert sum(seen) == 7
        assert seen[1:] == [6], seen
    finally:
        log = forksafe.info(proxy).host_log
        stop_shared(proxy)
        if log is not None:
            os.unlink(log)
