"""A whole pool starting at once: every first call is answered, none fails with a raw OS error."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.host_scenarios import stop_shared
from tests.support.children import fork_many
from tests.support.fakes import Recorder

pytestmark = pytest.mark.timeout(600)
PROCESSES = 32
THREADS = 16


def _first_calls(tag: str, index: int) -> dict[str, Any]:
    """In one worker of the pool: 16 threads make their first call at once."""
    proxy = forksafe.lazy_model(Recorder, tag, 0.0, 3.0, isolation="shared", timeout=60)
    start = threading.Barrier(THREADS)
    outcomes: list[str] = []

    def call(thread: int) -> None:
        x = np.full((1, 3), float(index * THREADS + thread))
        start.wait(30)
        try:
            right = np.array_equal(proxy.predict(x), x * 2.0 + 1.0)
            outcomes.append("right" if right else "wrong")
        except forksafe.HostTimeoutError:
            outcomes.append("HostTimeoutError")
        except BaseException as exc:  # what must never happen: counted with its class
            outcomes.append(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")

    threads = [threading.Thread(target=call, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {"outcomes": outcomes, "host": forksafe.info(proxy).host_pid, "pid": os.getpid()}


def test_512_first_calls_at_once_while_the_model_loads() -> None:
    """32 processes x 16 threads at a host that takes 3 s to load: all right, one host.

    A call may end in HostTimeoutError at its bound on an overloaded
    machine; an OSError (EAGAIN, ECONNREFUSED) or any other error must not.
    """
    tag = uuid.uuid4().hex
    results = [o.get() for o in fork_many(lambda i: _first_calls(tag, i), PROCESSES, timeout=300)]
    outcomes = [o for r in results for o in r["outcomes"]]
    assert len(outcomes) == PROCESSES * THREADS
    problems = sorted({o for o in outcomes if o not in ("right", "HostTimeoutError")})
    assert not problems, problems
    assert outcomes.count("right") >= 0.9 * len(outcomes), outcomes.count("HostTimeoutError")
    hosts = {r["host"] for r in results} - {None}
    assert len(hosts) == 1, hosts
    stop_shared(forksafe.lazy_model(Recorder, tag, 0.0, 3.0, isolation="shared", timeout=60))
