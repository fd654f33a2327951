"""Interrupts at every step of a host exchange: the next call always gets its own answer."""

from __future__ import annotations

import gc
import os
import random
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import forksafe
from tests.faults.conftest import Tracked, fault_once
from tests.host_scenarios import stop_shared
from tests.stress.scenarios import count
from tests.support import fakes
from tests.support.fakes import HostProbe, Recorder
from tests.support.procs import wait_gone

pytestmark = pytest.mark.timeout(600)


class SoftTimeLimit(Exception):
    """What a signal handler raises (Celery's soft time limit does this)."""


def _raise_soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimit()


@pytest.fixture
def soft_limit_signal() -> Iterator[int]:
    """SIGUSR2 raises SoftTimeLimit in the main thread for the test's duration.

    A signal that lands while the garbage collector runs a finalizer (any
    object's, this test's or an earlier one's) cannot reach the test: Python
    reports it as unraisable. Those are this test's own signals and are let
    go; any other unraisable exception still fails the test.
    """
    previous = signal.signal(signal.SIGUSR2, _raise_soft_limit)
    hook = sys.unraisablehook

    def let_own_signals_go(unraisable: Any) -> None:
        if unraisable.exc_type is not SoftTimeLimit:
            hook(unraisable)

    sys.unraisablehook = let_own_signals_go
    try:
        yield signal.SIGUSR2
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGUSR2, previous)


def _raise(kind: type[BaseException]) -> Any:
    def action() -> None:
        raise kind()

    return action


STEPS = ["client.handshake", "client.send", "client.sent", "client.received"]
SIZES = {"small": 3, "shared": 300_000}  # 300,000 float64: 2.4 MB, through shared memory


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind", [KeyboardInterrupt, SoftTimeLimit], ids=lambda k: k.__name__)
@pytest.mark.parametrize("step", STEPS)
def test_an_interrupt_at_each_step(
    tracked: Tracked, step: str, kind: type[BaseException], size: str
) -> None:
    """The interrupt propagates; a started host is retired; the next calls answer right."""
    proxy = tracked.proxy()
    if step != "client.handshake":
        assert proxy.value == 42  # the host is up, so the fault hits a call
    before = forksafe.info(proxy).host_pid
    x = np.full(SIZES[size], 3.0)
    with fault_once(step, _raise(kind)) as hits, pytest.raises(kind):
        proxy.predict(x)
    assert hits == [1]
    if before is not None:
        assert wait_gone(before), "an interrupted exchange's host was not retired"
    for k in (1.0, 5.0):
        np.testing.assert_array_equal(proxy.predict(np.full(SIZES[size], k)), 2.0 * k)
    assert proxy.value == 42


def test_an_interrupt_while_the_model_loads(tracked: Tracked, soft_limit_signal: int) -> None:
    """A signal handler raises while the host is loading: the next use loads afresh."""
    proxy = tracked.proxy(fakes.NumpyModel, 2.0, 0.5)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), soft_limit_signal))
    timer.start()
    with pytest.raises(SoftTimeLimit):
        proxy.predict(np.ones(2))
    timer.join()
    np.testing.assert_array_equal(proxy.predict(np.ones(2)), np.full(2, 2.0))
    assert forksafe.info(proxy).loads == 1


def test_an_interrupt_just_after_a_call_takes_the_hosts_lock(tracked: Tracked) -> None:
    """A signal the moment a call takes a private host's lock: later calls are not locked out."""
    proxy = tracked.proxy(timeout=2)
    assert proxy.value == 42
    with fault_once("client.locked", _raise(SoftTimeLimit)) as hits, pytest.raises(SoftTimeLimit):
        proxy.predict(np.ones(3))
    assert hits == [1]
    np.testing.assert_array_equal(proxy.predict(np.ones(3)), np.full(3, 2.0))


def test_an_interrupt_while_a_connection_closes(tracked: Tracked) -> None:
    """Interrupted again while the interrupted exchange's connection closes: its segments go too."""
    proxy = tracked.proxy()
    x = np.full(SIZES["shared"], 3.0)
    np.testing.assert_array_equal(proxy.predict(x), 2.0 * x)  # the pool holds a segment now
    before = forksafe.info(proxy).host_pid
    gc.collect()  # no earlier test's garbage closes a connection under the fault
    with (
        fault_once("client.received", _raise(KeyboardInterrupt)),
        fault_once("client.closing", _raise(SoftTimeLimit)) as hits,
        pytest.raises(SoftTimeLimit),
    ):
        proxy.predict(x)
    assert hits == [1]
    assert before is not None and wait_gone(before)
    np.testing.assert_array_equal(proxy.predict(x), 2.0 * x)


def test_an_interrupt_while_a_dropped_proxy_is_collected(
    tracked: Tracked, soft_limit_signal: int
) -> None:
    """A signal in the collector's cleanup of a dropped proxy: its host and segments still go.

    The garbage collector closes the connections of a proxy nobody holds; a
    signal handler that raises there cannot reach anyone (Python reports it
    as unraisable), so the cleanup has to finish regardless.
    """
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    x = np.full(SIZES["shared"], 3.0)
    np.testing.assert_array_equal(proxy.predict(x), 2.0 * x)
    host = forksafe.info(proxy).host_pid
    seen: list[Any] = []
    hook = sys.unraisablehook
    sys.unraisablehook = seen.append
    gc.collect()  # the fault is for this proxy's connection, not an earlier test's garbage
    try:
        with fault_once("client.closing", _raise(SoftTimeLimit)) as hits:
            del proxy
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert hits == [1] and [u.exc_type for u in seen] == [SoftTimeLimit]
    assert host is not None and wait_gone(host), "a dropped proxy's host outlived it"
    # tracked's check: no segment left behind


def _storm(proxy: Any, signum: int, rounds: int, answer: Any) -> tuple[int, int, set[int]]:
    """Signals at random moments of ``rounds`` calls; every answer checked against ``answer``.

    Returns how many calls were interrupted, how many answered, and the hosts seen.
    """
    rng = random.Random(20261126)
    hosts: set[int] = set()
    interrupted = answered = 0
    for i in range(rounds):
        x = np.full(rng.choice([3, 300_000]), float(i))
        # Half the calls are left alone, so hosts get to start and answer between hits.
        delay = rng.uniform(0.0, 0.006) if rng.random() < 0.5 else 3600.0
        timer = threading.Timer(delay, os.kill, (os.getpid(), signum))
        try:
            try:
                timer.start()
                y = proxy.predict(x)
                hosts.add(forksafe.info(proxy).host_pid or 0)
                np.testing.assert_array_equal(y, answer(x))
                answered += 1
            finally:
                timer.cancel()
                timer.join()
                for _ in range(100):  # let a pending handler run inside this try
                    pass
        except SoftTimeLimit:
            interrupted += 1
    print(
        f"\nSTRESS interrupt_storm: rounds={rounds} interrupted={interrupted} answered={answered}"
    )
    return interrupted, answered, hosts


def test_interrupt_storm(tracked: Tracked, soft_limit_signal: int) -> None:
    """Signals at random moments of hundreds of calls, small and shared: never a wrong answer."""
    proxy = tracked.proxy()
    interrupted, answered, hosts = _storm(
        proxy, soft_limit_signal, count(600, 60), lambda x: 2.0 * x
    )
    np.testing.assert_array_equal(proxy.predict(np.full(4, -1.0)), np.full(4, -2.0))
    assert interrupted and answered, "the storm never hit (or never missed) a call"
    current = forksafe.info(proxy).host_pid
    for pid in hosts - {current, 0}:
        assert wait_gone(pid)


def test_interrupt_storm_on_a_shared_host(soft_limit_signal: int) -> None:
    """The same storm on a shared host: never a wrong answer, and one host serves throughout.

    An interrupted call retires its connection, not the host other processes use.
    """
    proxy = forksafe.lazy_model(Recorder, uuid.uuid4().hex, isolation="shared", timeout=60)
    try:
        host = proxy.pid()
        interrupted, answered, hosts = _storm(
            proxy, soft_limit_signal, count(600, 60), lambda x: 2.0 * x + 1.0
        )
        np.testing.assert_array_equal(proxy.predict(np.full(4, -1.0)), np.full(4, -1.0))
        assert interrupted and answered, "the storm never hit (or never missed) a call"
        assert hosts == {host} and proxy.pid() == host, (hosts, host)
    finally:
        stop_shared(proxy)
