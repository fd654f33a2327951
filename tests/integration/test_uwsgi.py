"""uWSGI preforking (and lazy-apps) workers serving the Flask app over real HTTP.

uWSGI forks its workers in C: Python's at-fork hooks do not run in them
(unless ``--py-call-osafterfork``), so these tests also check the proxy's pid
backstop; and ``sys.executable`` is the uwsgi binary, not Python, so a host
must start with the environment's own Python.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.models import Models
from tests.support import requires
from tests.support.servers import check_answers, free_port, post_rows
from tests.support.workers import ROOT, worker_process

pytestmark = [pytest.mark.timeout(600), pytest.mark.keras_backend("tensorflow")]


def uwsgi_binary() -> str:
    """The uwsgi program installed beside this interpreter, or skip (fail under CI)."""
    program = os.path.join(os.path.dirname(sys.executable), "uwsgi")
    if not os.access(program, os.X_OK):
        requires.missing(f"needs the uwsgi program beside {sys.executable} (pip install uwsgi)")
    return program


def serve(
    models: Models, tmp: Any, *options: str, requests: int = 16, **env: str
) -> tuple[list[dict[str, Any]], int]:
    """uWSGI master with 2 workers and ``options``; concurrent requests; answers, master pid."""
    requires.package("flask")
    program = uwsgi_binary()
    port = free_port()
    args = [
        "--http-socket", f"127.0.0.1:{port}", "--master", "--processes", "2",
        "--module", "tests.workers.flask_app:app", "--chdir", ROOT, "--pythonpath", ROOT,
        "--virtualenv", sys.prefix, "--die-on-term", "--need-app", "--harakiri", "120", *options,
    ]  # fmt: skip
    x, _ = models.reference()
    log = str(tmp / "uwsgi.log")
    environment = {"FS_MODEL": models.keras, **env}
    with worker_process(
        args, environment, log, "spawned uWSGI worker 2", program=program
    ) as master:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post_rows(port, x.tolist()), range(requests)))
        return answers, master.pid


@pytest.mark.parametrize(
    "options",
    [(), ("--enable-threads",), ("--py-call-osafterfork", "--enable-threads")],
    ids=["default", "enable-threads", "py-call-osafterfork"],
)
@pytest.mark.support("uWSGI", "preforking", case="enable-threads and py-call-osafterfork off or on")
def test_preforked_workers_load_once_each(
    models: Models, tmp_path: Any, options: tuple[str, ...]
) -> None:
    """The master imports the app (uWSGI's default): each worker loads once, the master never."""
    answers, master = serve(models, tmp_path, *options)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and master not in per_pid


@pytest.mark.support("uWSGI", "lazy-apps", case="{poisoned?app ran TensorFlow}")
@pytest.mark.parametrize("poisoned", [False, True], ids=["untouched", "ran-tensorflow"])
def test_lazy_apps_workers_load_once_each(models: Models, tmp_path: Any, poisoned: bool) -> None:
    """--lazy-apps: each worker imports the app itself, so even TensorFlow at import is its own."""
    extra = {"FS_PARENT_RUNS_TF": "1"} if poisoned else {}
    answers, master = serve(models, tmp_path, "--lazy-apps", "--enable-threads", **extra)
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "inprocess")
    assert len(per_pid) <= 2 and master not in per_pid


@pytest.mark.support("uWSGI", "preforking", case="master ran TensorFlow, isolation={isolation}")
@pytest.mark.parametrize("isolation", ["auto", "process"])
def test_master_that_ran_tensorflow_answers_through_hosts(
    models: Models, tmp_path: Any, isolation: str
) -> None:
    """The app ran TensorFlow in the master at import: each worker answers through a host."""
    answers, master = serve(
        models, tmp_path, "--enable-threads", FS_PARENT_RUNS_TF="1", FS_ISOLATION=isolation
    )
    _, reference = models.reference()
    per_pid = check_answers(answers, reference, "process")
    assert master not in per_pid


@pytest.mark.support("uWSGI", "preforking", case='master ran TensorFlow, isolation="shared"')
def test_master_that_ran_tensorflow_shares_one_host(models: Models, tmp_path: Any) -> None:
    """Same master, isolation='shared': both workers answer through one host."""
    answers, _ = serve(
        models, tmp_path, "--enable-threads", FS_PARENT_RUNS_TF="1", FS_ISOLATION="shared"
    )
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1


@pytest.mark.support("uWSGI", "preforking", case='isolation="shared"')
def test_shared_host_for_an_untouched_master(models: Models, tmp_path: Any) -> None:
    """isolation='shared' with an untouched master: both workers answer through one host."""
    answers, _ = serve(models, tmp_path, "--enable-threads", FS_ISOLATION="shared")
    _, reference = models.reference()
    check_answers(answers, reference, "shared")
    assert len({answer["host_pid"] for answer in answers}) == 1
