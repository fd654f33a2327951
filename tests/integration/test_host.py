"""The out-of-process host: real processes, real SIGKILLs, real shared memory, bounded waits."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import forksafe
from tests import scenarios
from tests.models import KERAS_BACKEND, Models
from tests.support.children import fork_call, run_clean, run_python
from tests.support.fakes import HostProbe
from tests.support.procs import parent_of, segments_back_to, shm_segments, wait_gone

pytestmark = pytest.mark.timeout(300)


@pytest.mark.support("os.fork", "", start="fork", case="parent ran the framework: a host answers")
def test_poisoned_child_answers_through_a_host(models: Models) -> None:
    """Parent ran Keras predict; the child's auto and process proxies answer, inprocess refuses."""
    result = run_clean(scenarios.poisoned_child_isolations, models, timeout=180).get()
    child, reference = result["child"], result["reference"]
    for key in ("auto", "auto_again", "process"):
        np.testing.assert_allclose(child[key], reference, atol=1e-5)
    assert isinstance(child["inprocess"], forksafe.InheritedRuntimeError)
    info = child["auto_info"]
    assert info.in_effect == "process" and info.isolation == "auto"
    assert info.host_pid not in (None, child["pid"], result["parent_pid"])
    assert info.backend == KERAS_BACKEND
    assert child["process_info"].host_pid != info.host_pid  # one host per proxy
    # The child itself never started the runtime: the host did.
    assert not getattr(child["started_here"], KERAS_BACKEND).started
    warned = [text for category, text in child["warnings"] if category == "ForkSafeWarning"]
    assert len(warned) == 1  # once per process, though two proxies went out of process
    assert "separate host process" in warned[0]
    assert f"parent process {result['parent_pid']}" in warned[0]


def test_hosts_are_forked_from_one_template(probe: forksafe.ModelProxy) -> None:
    """Hosts for two proxies are children of the same template, not of this process."""
    other = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    first, second = probe.pid(), other.pid()
    assert first != second
    assert os.getpid() not in (first, second)
    assert parent_of(first) == parent_of(second) != os.getpid()
    assert forksafe.info(probe).host_pid == first


def test_method_calls_attributes_and_errors_cross_the_boundary(
    probe: forksafe.ModelProxy,
) -> None:
    """Methods, plain attributes, the model's own exceptions, and clear HostErrors."""
    np.testing.assert_array_equal(probe.predict(np.arange(4.0)), np.arange(4.0) * 2)
    assert probe.value == 42
    assert probe.built_in == forksafe.info(probe).host_pid
    assert probe.echo({"a": [1, (2.5, "x")], "b": None}) == {"a": [1, (2.5, "x")], "b": None}
    with pytest.raises(ValueError, match="boom from the host"):
        probe.boom()
    with pytest.raises(AttributeError):
        probe.no_such_attribute  # noqa: B018
    with pytest.raises(forksafe.HostError, match=r"unpicklable.*cannot cross a process boundary"):
        probe.unpicklable()
    assert probe.value == 42  # the host survived all of that


def test_keras_attribute_that_cannot_cross_names_it(models: Models) -> None:
    """A non-data attribute of a hosted Keras model is a HostError naming it."""
    proxy = forksafe.load_model(models.keras, isolation="process", timeout=60)
    x, reference = models.reference()
    np.testing.assert_allclose(proxy.predict_on_batch(x), reference, atol=1e-5)
    assert proxy.name == "tiny"
    assert proxy.input_shape == (None, 4)
    with pytest.raises(forksafe.HostError, match=r"'layers'.*list of Dense"):
        proxy.layers  # noqa: B018


def test_64mb_arrays_round_trip_bit_exact_through_reused_segments() -> None:
    """64 MB each way, bit-exact; segments are reused call after call and gone with the host."""
    before = shm_segments()
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    array = np.random.default_rng(7).standard_normal(8 * 1024 * 1024)  # float64: 64 MB
    assert array.nbytes == 64 * 1024 * 1024
    back = proxy.echo(array)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert back.flags.writeable and back.flags.owndata  # a private copy, not a shared view
    first = shm_segments() - before
    assert len(first) == 2  # one segment each way
    for _ in range(3):
        assert proxy.echo(array).tobytes() == array.tobytes()
    assert shm_segments() - before == first  # reused, not renewed
    nested = proxy.echo({"x": [array[:300_000], np.arange(10)]})
    np.testing.assert_array_equal(nested["x"][0], array[:300_000])
    back[:] = 0  # the caller's copy is its own: the next call does not see this
    assert proxy.echo(array).tobytes() == array.tobytes()
    pid = forksafe.info(proxy).host_pid
    assert pid is not None
    del proxy, back, nested
    gc.collect()
    assert wait_gone(pid)
    assert not segments_back_to(before)


def test_host_killed_mid_call_is_reported_and_replaced(probe: forksafe.ModelProxy) -> None:
    """SIGKILL during a call, 20 times: HostCrashedError within 2 s, then a new host answers."""
    before = shm_segments()
    big = np.ones(2 * 1024 * 1024)  # forces a shared-memory segment into each call
    killed: list[int] = []
    for _ in range(20):
        pid = probe.pid()
        killed.append(pid)
        timer = threading.Timer(0.2, os.kill, (pid, signal.SIGKILL))
        timer.start()
        start = time.monotonic()
        with pytest.raises(forksafe.HostCrashedError, match=f"process {pid} died"):
            probe.hold(big, 5.0)
        # The kill lands at 0.2 s into a call that would take 5 s.
        assert time.monotonic() - start < 0.2 + 2.0
        timer.join()
        assert probe.value == 42  # the next call starts a new host
        assert forksafe.info(probe).host_pid != pid
    for pid in killed:
        assert wait_gone(pid)
    assert not segments_back_to(before)


def test_host_exits_when_its_proxy_is_collected() -> None:
    """Dropping the last reference to a proxy ends its host."""
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
    pid = proxy.pid()
    del proxy
    gc.collect()
    assert wait_gone(pid, 10)


def client_pids(code: str, **env: str) -> tuple[int, int]:
    """Run a client in a fresh interpreter; return the two pids it printed last."""
    first, second = (int(pid) for pid in run_python(code, timeout=120, **env).split()[-2:])
    return first, second


def test_client_that_exits_leaves_no_host_and_no_template() -> None:
    """A client interpreter that exits normally takes its host and template with it."""
    host, template = client_pids("""
        import forksafe
        from tests.support.procs import parent_of
        from tests.support.fakes import HostProbe
        proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        host = proxy.pid()
        print(host, parent_of(host))
    """)
    assert wait_gone(host, 10), f"host {host} outlived its client"
    assert wait_gone(template, 10), f"template {template} outlived its client"


def test_killed_template_leaves_no_file_and_is_replaced(tmp_path: Path) -> None:
    """A template SIGKILLed leaves nothing in the temp dir; the next host comes from a new one."""
    killed, renewed = client_pids(
        """
        import os, signal
        import forksafe
        from tests.support.procs import parent_of, wait_gone
        from tests.support.fakes import HostProbe
        first = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        template = parent_of(first.pid())
        os.kill(template, signal.SIGKILL)
        assert wait_gone(template, 10)
        second = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
        print(template, parent_of(second.pid()))
        """,
        TMPDIR=str(tmp_path),
    )
    assert renewed != killed
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("forksafe-")]
    assert left == [], f"the templates left {left} in the temp dir"


def test_client_killed_its_host_exits(tmp_path: object) -> None:
    """A client process SIGKILLed: its host notices and exits."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=30)
            os.write(write_fd, str(proxy.pid()).encode())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        ready = os.read(read_fd, 64) if _readable(read_fd, 60) else b""
    finally:
        os.close(read_fd)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert ready, "the client never reported its host"
    host = int(ready)
    assert wait_gone(host, 10), f"host {host} outlived its killed client"


def _readable(fd: int, timeout: float) -> bool:
    import select

    return bool(select.select([fd], [], [], timeout)[0])


def test_bad_model_file_is_model_load_error_from_the_host(tmp_path: object) -> None:
    """A corrupt file: ModelLoadError in the client, with the host's explanation."""
    path = os.path.join(str(tmp_path), "bad.keras")
    with open(path, "wb") as f:
        f.write(b"not a zip")
    proxy = forksafe.load_model(path, isolation="process", timeout=60)
    with pytest.raises(forksafe.ModelLoadError, match="not a zip archive") as caught:
        proxy.predict  # noqa: B018
    assert "model host process" in "".join(getattr(caught.value, "__notes__", []))
    assert not forksafe.info(proxy).loaded


def test_thread_storm_on_one_hosted_proxy(probe: forksafe.ModelProxy) -> None:
    """16 threads x 25 calls on one host: every answer right (calls are serialised)."""
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(25):
                x = np.full(3, float(seed * 100 + i))
                np.testing.assert_array_equal(probe.predict(x), x * 2)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert forksafe.info(probe).loads == 1


def test_fork_child_of_a_client_starts_its_own_host(probe: forksafe.ModelProxy) -> None:
    """A forked child never reuses the parent's host connection; the parent's host survives."""
    parent_host = probe.pid()
    child = fork_call(lambda: (forksafe.info(probe).loaded, probe.pid()), timeout=60).get()
    was_loaded, child_host = child
    assert not was_loaded
    assert child_host != parent_host
    assert wait_gone(child_host)  # the child exited, so did its host
    assert probe.pid() == parent_host


def test_call_past_the_timeout_stops_the_host() -> None:
    """A call longer than timeout= raises HostTimeoutError (a TimeoutError); the next works."""
    proxy = forksafe.lazy_model(HostProbe, isolation="process", timeout=1.0)
    pid = proxy.pid()
    start = time.monotonic()
    with pytest.raises(forksafe.HostTimeoutError, match="did not answer") as caught:
        proxy.slow(10)
    assert isinstance(caught.value, TimeoutError)
    assert time.monotonic() - start < 3.0
    assert wait_gone(pid)
    assert proxy.slow(0.01) == 0.01


def test_timeout_must_be_positive() -> None:
    """timeout= is validated at creation."""
    for bad in (0, -1, "5", True):
        with pytest.raises(ValueError, match="timeout must be a positive number"):
            forksafe.lazy_model(HostProbe, isolation="process", timeout=bad)  # type: ignore[arg-type]


def test_factory_the_host_cannot_import_is_a_clear_error() -> None:
    """A factory the host cannot import: a HostError saying why; the host stays usable."""
    import types

    module = types.ModuleType("forksafe_only_in_this_process")
    exec("class Model:\n    value = 1\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        proxy = forksafe.lazy_model(module.Model, isolation="process", timeout=30)
        with pytest.raises(forksafe.HostError, match="importable by name"):
            proxy.value  # noqa: B018
    finally:
        del sys.modules[module.__name__]


def test_unpicklable_factory_or_argument_is_a_clear_error(probe: forksafe.ModelProxy) -> None:
    """Something that cannot be pickled here fails before it is sent, with a HostError."""
    proxy = forksafe.lazy_model(lambda: HostProbe(), isolation="process", timeout=30)
    for _ in range(2):  # a failed start is not half-cached: the second use fails alike
        with pytest.raises(forksafe.HostError, match="must be picklable"):
            proxy.value  # noqa: B018
    with pytest.raises(forksafe.HostError, match="cannot send echo"):
        probe.echo(threading.Lock())
    assert probe.value == 42
