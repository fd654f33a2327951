"""isolation='shared': one host for every process of this user, batching, failures, lifetime."""

from __future__ import annotations

import fcntl
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import forksafe
from forksafe import testing
from forksafe._host import client_shared as shared_host
from forksafe._host import wire
from tests import host_scenarios, scenarios
from tests.host_scenarios import stop_shared
from tests.models import Models
from tests.support.children import fork_many, run_clean, run_python
from tests.support.fakes import Recorder
from tests.support.procs import wait_gone

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tag() -> Iterator[str]:
    """A tag of this test's own: its proxies share a host no other test uses.

    Afterwards that host is stopped (it would linger for its grace period).
    """
    value = uuid.uuid4().hex
    yield value
    stop_shared(forksafe.lazy_model(Recorder, value, isolation="shared", timeout=30))


def shared(tag: str, **options: Any) -> forksafe.ModelProxy:
    """A shared proxy of this test's Recorder."""
    return forksafe.lazy_model(Recorder, tag, isolation="shared", timeout=30, **options)


@pytest.mark.support(
    "os.fork, multiprocessing, subprocess", 'isolation="shared"', case="one shared host for all"
)
def test_fork_siblings_spawned_workers_and_unrelated_processes_share_one_host(tag: str) -> None:
    """Four fork children racing to start it, a spawned worker, another interpreter: one host."""
    outcomes = fork_many(
        lambda i: host_scenarios.shared_client(tag, 5, 20, i), 4, timeout=120
    )  # racing starters: nobody has started it yet
    forked = [o.get() for o in outcomes]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        spawned = pool.apply(host_scenarios.shared_client, (tag, 5, 20, 99))
    code = f"""
        from tests import host_scenarios
        print(host_scenarios.shared_client({tag!r}, 5, 20, 7)["host"])
    """
    other = run_python(code, timeout=120)
    hosts = {r["host"] for r in [*forked, spawned]} | {int(other.split()[-1])}
    assert len(hosts) == 1, hosts
    assert all(r["wrong"] == 0 for r in [*forked, spawned])
    assert hosts.isdisjoint({r["pid"] for r in [*forked, spawned]} | {os.getpid()})


def test_concurrent_calls_are_joined_and_every_caller_gets_its_own_rows(tag: str) -> None:
    """16 threads, random batch sizes: answers equal in-process ones row for row; batches formed."""
    proxy = shared(tag, max_batch=32, max_wait_ms=5)
    rng = np.random.default_rng(11)
    inputs = [
        [rng.standard_normal((int(rng.integers(1, 6)), 3)) for _ in range(20)] for _ in range(16)
    ]
    reference = Recorder()
    wrong: list[Any] = []

    def worker(xs: list[np.ndarray]) -> None:
        for x in xs:
            if not np.array_equal(proxy.predict(x), reference.predict(x)):
                wrong.append(x)

    threads = [threading.Thread(target=worker, args=(xs,)) for xs in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not wrong
    seen = proxy.rows_seen()
    assert sum(seen) == sum(x.shape[0] for xs in inputs for x in xs)
    assert max(seen) > 5, "no call was ever joined with another"
    assert max(seen) <= 32


def test_max_batch_1_never_joins(tag: str) -> None:
    """With max_batch=1 every call runs alone."""
    proxy = shared(tag, max_batch=1)
    threads = [
        threading.Thread(target=lambda: [proxy.predict(np.ones((1, 3))) for _ in range(10)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert proxy.rows_seen() == [1] * 40


def test_a_dead_host_is_one_error_per_client_and_one_replacement(tag: str) -> None:
    """Killed: each of four clients hears HostCrashedError once; then all share one new host."""
    first = shared(tag).pid()

    def client(index: int) -> dict[str, Any]:
        proxy = shared(tag)
        assert proxy.pid() == first
        time.sleep(1.0)  # the parent kills the host meanwhile
        errors = 0
        answers = []
        for _ in range(3):
            try:
                answers.append(proxy.pid())
            except forksafe.HostCrashedError:
                errors += 1
        return {"errors": errors, "hosts": set(answers)}

    killer = threading.Timer(0.5, os.kill, (first, signal.SIGKILL))
    killer.start()
    results = [o.get() for o in fork_many(client, 4, timeout=120)]
    killer.join()
    assert [r["errors"] for r in results] == [1, 1, 1, 1]
    replacements = set().union(*(r["hosts"] for r in results))
    assert len(replacements) == 1 and first not in replacements


def test_a_client_that_dies_mid_call_costs_the_others_nothing(tag: str, tmp_path: Path) -> None:
    """One client is killed inside a call; the others' calls (joined or not) all answer.

    The killed client's call runs on in the host (a few seconds, well inside the
    host's own bound): the others' wait for it, then are answered by the same host.
    """
    proxy = shared(tag, max_wait_ms=20)
    host = proxy.pid()
    inside = str(tmp_path / "inside")

    pid = os.fork()
    if pid == 0:
        try:
            shared(tag, max_wait_ms=20).hang(5, inside)
        finally:
            os._exit(0)
    try:
        # Killed only once the host runs its call: the model's thread is busy with it.
        assert testing.wait_until(lambda: os.path.exists(inside), 30), "the call never began"
        os.kill(pid, signal.SIGKILL)
    finally:
        os.waitpid(pid, 0)
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0 + 1.0)
    assert proxy.pid() == host


def test_a_hung_call_is_bounded_for_its_caller_and_the_host_replaced(tag: str) -> None:
    """A call past its timeout: HostTimeoutError for it; the host ends after its own bound."""
    starter = forksafe.lazy_model(Recorder, tag, isolation="shared", timeout=2)
    host = starter.pid()
    start = time.monotonic()
    with pytest.raises(forksafe.HostTimeoutError):
        starter.hang(60)
    assert time.monotonic() - start < 2 + 2
    assert wait_gone(host, 10), "the host kept a hung call for good"
    assert starter.pid() != host


def test_an_interrupted_call_never_answers_a_later_one(tag: str) -> None:
    """Ctrl-C during a shared call: the connection is retired, the host serves on."""
    proxy = shared(tag)
    host = proxy.pid()
    # Python's own SIGINT handler, whatever this process inherited: started as a
    # background job of a shell (``cmd &``), it ignores SIGINT and nothing is interrupted.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            proxy.hang(2.0)
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    x = np.ones((1, 3))
    np.testing.assert_array_equal(proxy.predict(x), x * 2.0 + 1.0)
    assert proxy.pid() == host


def test_the_host_leaves_after_its_grace_period(tag: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No client left: the host exits once its grace period has passed."""
    monkeypatch.setattr(shared_host, "GRACE_SECONDS", 0.5)
    proxy = shared(f"{tag}-grace")
    host = proxy.pid()
    log = forksafe.info(proxy).host_log
    assert log is not None
    del proxy
    gc.collect()
    assert wait_gone(host, 10)
    assert os.path.exists(log)  # kept for reading
    base = log.removesuffix(".log")
    assert not os.path.exists(f"{base}.sock")
    assert not os.path.exists(f"{base}.lock")


def test_a_starter_whose_lock_file_was_removed_starts_under_the_new_one(
    tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leaving host removed the lock file a starter had just locked: it starts under a new one.

    Otherwise that starter's host would hold a lock no later starter can see,
    and the next one would start a second host beside it.
    """
    removed: list[str] = []

    def leave_under_it() -> None:  # what a leaving host does between open and flock
        if not removed:
            path = sys._getframe(2).f_locals["lock_path"]  # SharedHost._start's
            os.unlink(path)
            removed.append(path)

    monkeypatch.setitem(wire._faults, "shared.locked", leave_under_it)
    proxy = shared(tag)
    np.testing.assert_array_equal(proxy.predict(np.ones((1, 2))), np.full((1, 2), 3.0))
    assert removed and os.path.exists(removed[0])
    with open(removed[0], "rb") as lock, pytest.raises(BlockingIOError):
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the host holds this very file


def test_workers_that_use_a_shared_keras_model_never_import_tensorflow(models: Models) -> None:
    """A fresh worker calling a shared Keras model: numpy only, TensorFlow stays out."""
    result = run_clean(host_scenarios.keras_through_a_shared_host, models, spawn=True).get()
    _, reference = models.reference()
    np.testing.assert_allclose(result["y"], reference, atol=1e-5)
    assert result["frameworks"] == []
    assert result["in_effect"] == "shared"


def test_the_shared_hosts_output_goes_to_its_log(tag: str) -> None:
    """What the loader and the model print lands in the log that info() names."""
    proxy = forksafe.lazy_model(
        scenarios.printing_factory, f"factory {tag}", isolation="shared", timeout=30
    )
    assert proxy.shout(f"model {tag}") == f"model {tag}"
    log = forksafe.info(proxy).host_log
    assert log is not None and os.stat(log).st_mode & 0o777 == 0o600
    with open(log, encoding="utf-8") as f:
        text = f.read()
    for line in (
        f"factory {tag}: building the model",
        f"model {tag} on stdout",
        f"model {tag} on stderr",
    ):
        assert line in text
    stop_shared(proxy)


def test_a_failed_load_is_not_cached(models: Models, tmp_path: Any) -> None:
    """A corrupt file: ModelLoadError; once the file is fixed, a later use loads it."""
    path = tmp_path / "model.keras"
    path.write_bytes(b"not a zip")
    proxy = forksafe.load_model(path, isolation="shared", timeout=60)
    with pytest.raises(forksafe.ModelLoadError, match="not a zip archive"):
        proxy.predict_on_batch  # noqa: B018
    assert not forksafe.info(proxy).loaded
    shutil.copyfile(models.keras, path)
    x, reference = models.reference()
    deadline = time.monotonic() + 20
    while True:  # the failed host answers with its error for a moment, then leaves
        try:
            y = proxy.predict_on_batch(x)
            break
        except forksafe.ModelLoadError:
            assert time.monotonic() < deadline, "the failed load was cached"
            time.sleep(0.2)
    np.testing.assert_allclose(y, reference, atol=1e-5)
    stop_shared(proxy)
