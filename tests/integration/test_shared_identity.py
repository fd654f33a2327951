"""A shared host serves exactly what ``load_model`` would load now, in the caller's environment.

A deploy (the file replaced by rename, a ``current`` symlink switched) gives
new clients a new host with the new model while old clients keep theirs; a
client of another environment (``KERAS_BACKEND``, ``sys.path``) never reaches
a host that another environment started.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import forksafe
from forksafe import testing
from tests.faults.conftest import fault_once
from tests.host_scenarios import stop_shared
from tests.support import requires
from tests.support.children import fork_call, run_clean, run_python
from tests.support.fakes import NumpyModel
from tests.support.procs import terminate

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_scale(path: str) -> NumpyModel:
    """A loader: the file holds the model's one weight."""
    with open(path, encoding="utf-8") as f:
        return NumpyModel(float(f.read()))


def deploy(path: Path, text: str) -> None:
    """Replace ``path`` atomically, as deploy tools do (write aside, then rename over)."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text, encoding="utf-8")
    os.replace(aside, path)


@pytest.fixture
def proxies() -> Iterator[list[forksafe.ModelProxy]]:
    """Shared proxies a test made; their hosts are stopped at the end."""
    made: list[forksafe.ModelProxy] = []
    yield made
    for proxy in made:
        if forksafe.info(proxy).host_pid is not None:
            stop_shared(proxy)


def shared_scale(path: Path, proxies: list[forksafe.ModelProxy]) -> forksafe.ModelProxy:
    """A shared proxy of the file at ``path``, loaded with ``load_scale``."""
    proxy = forksafe.load_model(path, loader=load_scale, isolation="shared", timeout=60)
    proxies.append(proxy)
    return proxy


def test_after_a_deploy_by_rename_new_clients_get_the_new_model(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """Old clients keep the old model (as a loaded worker would); new ones get the new one."""
    path = tmp_path / "model.scale"
    path.write_text("2", encoding="utf-8")
    x = np.arange(3.0)
    old = shared_scale(path, proxies)
    np.testing.assert_array_equal(old.predict(x), x * 2)
    deploy(path, "3")
    new = shared_scale(path, proxies)
    np.testing.assert_array_equal(new.predict(x), x * 3)
    assert forksafe.info(new).host_pid != forksafe.info(old).host_pid
    np.testing.assert_array_equal(old.predict(x), x * 2)  # until it reconnects
    # A worker forked now, and an unrelated process, get the new model too.
    child = fork_call(lambda: shared_scale(path, []).predict(x), timeout=120).get()
    np.testing.assert_array_equal(child, x * 3)


def test_after_a_symlink_switch_new_clients_get_the_new_release(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """``current -> release-1`` switched to ``release-2``: a real Keras model of each release."""
    releases = []
    for seed in (1, 2):
        directory = tmp_path / f"release-{seed}"
        directory.mkdir()
        releases.append(
            testing.run_in_subprocess(
                testing.save_tiny_model, str(directory), seed=seed, timeout=180
            )
        )
    current = tmp_path / "current.keras"
    current.symlink_to(releases[0].path)
    old = forksafe.load_model(current, isolation="shared", timeout=120)
    proxies.append(old)
    np.testing.assert_allclose(old.predict_on_batch(releases[0].x), releases[0].y, atol=1e-5)
    switch = tmp_path / "current.keras.new"
    switch.symlink_to(releases[1].path)
    os.replace(switch, current)
    new = forksafe.load_model(current, isolation="shared", timeout=120)
    proxies.append(new)
    np.testing.assert_allclose(new.predict_on_batch(releases[1].x), releases[1].y, atol=1e-5)
    np.testing.assert_allclose(old.predict_on_batch(releases[0].x), releases[0].y, atol=1e-5)


def test_a_file_replaced_in_place_is_a_new_model_too(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """Rewritten in place (same inode, new size or time): new clients see the new weight."""
    path = tmp_path / "model.scale"
    path.write_text("2", encoding="utf-8")
    old = shared_scale(path, proxies)
    assert old.predict(1.0) == 2.0
    path.write_text("10", encoding="utf-8")
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert shared_scale(path, proxies).predict(1.0) == 10.0


def test_a_client_that_reconnects_after_its_host_died_gets_the_deployed_model(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """The old host killed after a deploy: its client's next calls reach the new model."""
    path = tmp_path / "model.scale"
    path.write_text("2", encoding="utf-8")
    proxy = shared_scale(path, proxies)
    old_host = proxy.pid()
    deploy(path, "5")
    os.kill(old_host, 9)
    with pytest.raises(forksafe.HostCrashedError):
        proxy.predict(1.0)
    assert proxy.predict(1.0) == 5.0


def test_a_client_whose_last_connection_an_interrupt_dropped_sees_a_deploy(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """A signal just after an answer drops that connection; with none left, a deploy is seen.

    The client's identity is pinned while it has a connection. A connection
    an interrupt dropped (closed by the garbage collector) must count as
    ended, or the client stays on the old release for good.
    """
    path = tmp_path / "model.scale"
    path.write_text("2", encoding="utf-8")
    proxy = shared_scale(path, proxies)
    assert proxy.predict(1.0) == 2.0
    with fault_once("client.answered", _soft_time_limit) as hits, pytest.raises(TimeoutError):
        proxy.predict(1.0)
    assert hits == [1]
    gc.collect()
    deploy(path, "5")
    assert proxy.predict(1.0) == 5.0


def _soft_time_limit() -> None:
    raise TimeoutError("a signal handler's soft time limit")


def _client_in(env: dict[str, str], code: str) -> dict[str, Any]:
    """Run ``code`` (which prints a repr of a dict) in a fresh interpreter with ``env``."""
    return eval(run_python(code, timeout=240, **env).splitlines()[-1])  # type: ignore[no-any-return]


_KERAS_CLIENT = """
import os
import numpy as np
import forksafe
from forksafe import testing
x = np.load({x!r})
proxy = forksafe.load_model({path!r}, isolation="shared", timeout=120)
y = proxy.predict_on_batch(x)
info = forksafe.info(proxy)
print(repr({{"host": info.host_pid, "backend": info.backend, "y": y.tolist()}}))
"""


@pytest.mark.parametrize("other", ["jax", "torch"])
def test_another_keras_backend_never_reaches_the_tensorflow_host(
    tmp_path: Path, other: str
) -> None:
    """KERAS_BACKEND=tensorflow and another backend, one file: two hosts, each its backend."""
    requires.installed(other)
    tiny = testing.run_in_subprocess(testing.save_tiny_model, str(tmp_path), timeout=180)
    np.save(tmp_path / "x.npy", tiny.x)
    code = _KERAS_CLIENT.format(path=tiny.path, x=str(tmp_path / "x.npy"))
    seen = {
        backend: _client_in({"KERAS_BACKEND": backend}, code) for backend in ("tensorflow", other)
    }
    try:
        assert seen["tensorflow"]["backend"] == "tensorflow"
        assert seen[other]["backend"] == other
        assert seen["tensorflow"]["host"] != seen[other]["host"]
        for answer in seen.values():
            np.testing.assert_allclose(answer["y"], tiny.y, atol=1e-5)
    finally:
        for answer in seen.values():
            terminate(answer["host"])


_PATH_CLIENT = """
import uuid, numpy as np, forksafe
from tests.integration.test_shared_identity import load_scale
proxy = forksafe.load_model({path!r}, loader=load_scale, isolation="shared", timeout=60)
print(repr({{"host": proxy.pid(), "y": proxy.predict(1.0)}}))
"""


_APP_MODULE = """
import os

FACTOR = {factor}


class Scaled:
    def __init__(self, w):
        self.w = w

    def predict(self, x):
        return self.w * x * FACTOR

    def pid(self):
        return os.getpid()


def load_scale(path):
    with open(path, encoding="utf-8") as f:
        return Scaled(float(f.read()))
"""

_APP_CLIENT = """
import forksafe
from scalemod import load_scale
proxy = forksafe.load_model({path!r}, loader=load_scale, isolation="shared", timeout=60)
print(repr({{"host": proxy.pid(), "y": proxy.predict(1.0)}}))
"""


def test_another_sys_path_never_reaches_this_environments_host(tmp_path: Path) -> None:
    """Two apps whose loader module differs (PYTHONPATH): two hosts, each its own answers.

    The same app with its path padded by a directory that changes no import shares
    the first app's host: the order and padding of ``sys.path`` are not the identity.
    """
    path = tmp_path / "model.scale"
    path.write_text("4", encoding="utf-8")
    apps = {}
    for name, factor in (("app_a", 1), ("app_b", 10)):
        apps[name] = tmp_path / name
        apps[name].mkdir()
        (apps[name] / "scalemod.py").write_text(_APP_MODULE.format(factor=factor), "utf-8")
    (tmp_path / "empty").mkdir()
    code = _APP_CLIENT.format(path=str(path))
    a = _client_in({"PYTHONPATH": str(apps["app_a"])}, code)
    try:
        b = _client_in({"PYTHONPATH": str(apps["app_b"])}, code)
        padded = _client_in({"PYTHONPATH": f"{tmp_path / 'empty'}:{apps['app_a']}"}, code)
    finally:
        terminate(a["host"])
    terminate(b["host"])
    assert (a["y"], b["y"], padded["y"]) == (4.0, 40.0, 4.0)
    assert a["host"] != b["host"]
    assert padded["host"] == a["host"]


def test_the_same_model_in_the_same_environment_shares_one_host(
    tmp_path: Path, proxies: list[forksafe.ModelProxy]
) -> None:
    """Nothing changed: a proxy here, a fork child and another interpreter share the host."""
    path = tmp_path / "model.scale"
    path.write_text("6", encoding="utf-8")
    here = shared_scale(path, proxies)
    host = here.pid()
    assert fork_call(lambda: shared_scale(path, []).pid(), timeout=120).get() == host
    assert _client_in({}, _PATH_CLIENT.format(path=str(path)))["host"] == host


def in_process_deploy(path: Path) -> tuple[float, float, float]:
    """In an untouched parent: load, deploy, let a fork child load; every answer."""
    proxy = forksafe.load_model(path, loader=load_scale, isolation="inprocess")
    before = proxy.predict(1.0)
    deploy(path, "7")
    child = fork_call(lambda: proxy.predict(1.0), timeout=60).get()
    return before, child, proxy.predict(1.0)


def test_an_in_process_fork_child_loads_what_is_at_the_path_at_its_first_use(
    tmp_path: Path,
) -> None:
    """The documented choice for in-process proxies: each process loads the file it finds.

    The parent keeps what it loaded; its fork child loads the deployed file.
    """
    path = tmp_path / "model.scale"
    path.write_text("2", encoding="utf-8")
    assert run_clean(in_process_deploy, path, timeout=120).get() == (2.0, 7.0, 2.0)
