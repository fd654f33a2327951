"""Fault injection: named steps of the host exchange, and what each test may leave behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import pytest

import forksafe
from forksafe._host import wire
from tests.support.fakes import HostProbe
from tests.support.procs import children_of, parent_of, segments_back_to, shm_segments, wait_gone


@contextlib.contextmanager
def fault_once(step: str, action: Callable[[], None]) -> Iterator[list[int]]:
    """Run ``action`` the first time the client reaches ``step``; yields a hit counter."""
    hits: list[int] = []

    def fire() -> None:
        wire._faults.pop(step, None)
        hits.append(1)
        action()

    wire._faults[step] = fire
    try:
        yield hits
    finally:
        wire._faults.pop(step, None)


class Tracked:
    """Proxies made by a test, and what their hosts and this tree's template look like."""

    def __init__(self) -> None:
        warm = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        self.template = parent_of(warm.pid())
        self._warm = warm
        self.hosts_before = set(children_of(self.template))
        self.segments_before = shm_segments()
        self.proxies: list[forksafe.ModelProxy] = []

    def proxy(
        self, factory: object = HostProbe, *args: object, timeout: float = 30
    ) -> forksafe.ModelProxy:
        made = forksafe.lazy_model(factory, *args, isolation="process", timeout=timeout)  # type: ignore[arg-type]
        self.proxies.append(made)
        return made

    def live_hosts(self) -> set[int]:
        return {h for p in self.proxies if (h := forksafe.info(p).host_pid) is not None}

    def check(self) -> None:
        """No host beyond the live proxies' remains, and no segment beyond their pools."""
        live = self.live_hosts() | self.hosts_before | {forksafe.info(self._warm).host_pid or 0}
        for pid in set(children_of(self.template)) - live:
            assert wait_gone(pid), f"host {pid} outlived its retirement"
        pools = {n for p in self.proxies for n in p.__wrapped__._client.segment_names()}
        pools |= set(self._warm.__wrapped__._client.segment_names())
        # A live host keeps a pool of reply segments of its own.
        left = segments_back_to(self.segments_before | pools, of_live=tuple(live))
        assert not left, f"leaked segments: {left}"


@pytest.fixture
def tracked() -> Iterator[Tracked]:
    """Make proxies through this; at the end nothing they retired may be left."""
    tracking = Tracked()
    yield tracking
    tracking.check()
    for proxy in tracking.proxies:
        pid = forksafe.info(proxy).host_pid
        if pid is not None and pid != os.getpid():
            os.kill(pid, 9)
