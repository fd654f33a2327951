"""The forksafe command line: doctor on real modules, demo with a real Celery worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from forksafe._frameworks import display
from tests.models import KERAS_BACKEND, Models
from tests.support import requires

pytestmark = pytest.mark.timeout(300)

CLEAN = """
import os
import forksafe

MODEL = forksafe.load_model(os.environ.get("FS_MODEL", "model.keras"))
"""

BAD = """
import os
import keras

MODEL = keras.models.load_model(os.environ["FS_MODEL"])
"""


def forksafe_cli(
    *args: str, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m forksafe ARGS``, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "forksafe", *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def test_doctor_passes_a_module_that_loads_lazily(tmp_path: Any) -> None:
    """A module with a proxy and no import-time framework work: exit 0."""
    (tmp_path / "clean_tasks.py").write_text(CLEAN)
    done = forksafe_cli("doctor", "clean_tasks", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: importing it started no framework runtime" in done.stdout


def test_console_script_doctor_finds_a_module_in_the_current_directory(tmp_path: Any) -> None:
    """``forksafe doctor tasks`` run where tasks.py is, as users type it (no PYTHONPATH)."""
    (tmp_path / "cwd_tasks.py").write_text(CLEAN)
    script = os.path.join(os.path.dirname(sys.executable), "forksafe")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [script, "doctor", "cwd_tasks"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: importing it started no framework runtime" in done.stdout


@pytest.mark.keras_backend("tensorflow", "jax")  # loading a small model starts no torch pool
def test_doctor_flags_import_time_loading(tmp_path: Any, models: Models) -> None:
    """The original report's module: exit 1, naming the line and the bare model."""
    (tmp_path / "bad_tasks.py").write_text(BAD)
    done = forksafe_cli(
        "doctor", "bad_tasks:MODEL", env={"PYTHONPATH": str(tmp_path), "FS_MODEL": models.keras}
    )
    assert done.returncode == 1, done.stdout + done.stderr
    started = rf"started the {display(KERAS_BACKEND)} runtime \(at .*bad_tasks\.py:5\)"
    assert re.search(started, done.stdout)
    assert "MODEL is a model loaded outside a proxy (keras." in done.stdout


BUILT_BY_CODE = """
import os
import keras

with open(os.environ["FS_JSON"]) as f:
    MODEL = keras.models.model_from_json(f.read())
MODEL.load_weights(os.environ["FS_WEIGHTS"])
"""


def write_json_and_weights(models: Models, directory: str) -> tuple[str, str]:
    """The tiny model as architecture JSON plus a weights file (in a clean process)."""
    import keras

    model = keras.models.load_model(models.keras)
    json_path = os.path.join(directory, "model.json")
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(model.to_json())
    weights = os.path.join(directory, "model.weights.h5")
    model.save_weights(weights)
    return json_path, weights


def test_doctor_suggests_lazy_model_for_a_model_built_by_code(
    tmp_path: Any, models: Models
) -> None:
    """A model from JSON plus weights cannot come from load_model(path): suggest lazy_model."""
    from tests.support.children import run_clean

    json_path, weights = run_clean(write_json_and_weights, models, str(tmp_path)).get()
    (tmp_path / "json_tasks.py").write_text(BUILT_BY_CODE)
    env = {"PYTHONPATH": str(tmp_path), "FS_JSON": json_path, "FS_WEIGHTS": weights}
    done = forksafe_cli("doctor", "json_tasks", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MODEL is a model loaded outside a proxy" in done.stdout
    assert "MODEL = forksafe.lazy_model(build_model)" in done.stdout
    assert "forksafe.load_model(path)" not in done.stdout


def test_doctor_reports_a_module_that_cannot_import(tmp_path: Any) -> None:
    """A missing module: exit 1 with the import error."""
    done = forksafe_cli("doctor", "no_such_module_here")
    assert done.returncode == 1
    assert "cannot import no_such_module_here: ModuleNotFoundError" in done.stdout


def test_demo_without_celery_says_what_to_install() -> None:
    """With Celery missing, demo exits at once naming the extra that installs it."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['celery'] = None  # Celery not installed\n"
            "from forksafe._cli import main; sys.exit(main(['demo']))",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "forksafe demo needs celery" in done.stderr
    assert "pip install 'forksafe[demo]'" in done.stderr
    assert "building" not in done.stdout  # it stopped before doing any work


def worker_rows(output: str) -> list[tuple[int, int, int]]:
    """(pid, loads, tasks) rows of the demo's table."""
    rows = re.findall(r"^\s+(\d+)\s+(\d+|-)\s+(\d+)\s+[\d.]+\s+", output, re.MULTILINE)
    return [(int(pid), int(loads) if loads != "-" else -1, int(n)) for pid, loads, n in rows]


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_demo_answers_every_task_with_one_load_per_worker(broker: str, tmp_path: Any) -> None:
    """forksafe demo: a real prefork worker answers all tasks; each process loaded once.

    It writes nothing into the directory it runs in (kombu's filesystem transport
    would put a ``control/`` folder there).
    """
    # The demo's own 20 s is for a user's idle machine; the suite's may be loaded.
    args = ["demo", "--workers", "2", "--tasks", "6", "--timeout", "120"]
    if broker == "redis":
        args += ["--broker", requires.redis_url()]
    done = forksafe_cli(*args, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answered 6 of 6 tasks" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    rows = worker_rows(done.stdout)
    assert 1 <= len(rows) <= 2
    assert all(loads == 1 for _, loads, _ in rows)
    assert sum(n for _, _, n in rows) == 6


def test_naive_demo_shows_the_hang_caught_by_a_timeout() -> None:
    """forksafe demo --naive: the original module hangs; the demo says so and stops."""
    done = forksafe_cli("demo", "--naive", "--tasks", "2", "--timeout", "8")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no answer within 8.0 s" in done.stdout
    assert "answered 0 of 2 tasks" in done.stdout


SERVED = {
    "rq": ("import rq\n", {}, "FORK PER JOB (RQ): a worker forks a work horse per job"),
    "celery-one-task-per-child": (
        "from celery import Celery\n"
        "app = Celery('tasks', broker='memory://')\n"
        "app.conf.worker_max_tasks_per_child = 1\n",
        {},
        "FORK PER JOB (Celery (worker_max_tasks_per_child = 1)): every task runs in a newly",
    ),
    "gunicorn-max-requests": (
        "",
        {"gunicorn.conf.py": "workers = 4\nmax_requests = 1000\n"},
        "NOTE (gunicorn (max_requests = 1000)): each worker is replaced after 1000 requests",
    ),
    "uwsgi": (
        "",
        {"uwsgi.ini": "[uwsgi]\nmodule = served_app:app\nmaster = true\nprocesses = 4\n"},
        "NOTE (uWSGI): the master imports the app and forks the workers from it",
    ),
    "uwsgi-lazy-apps": (
        "",
        {"uwsgi.ini": "[uwsgi]\nmodule = served_app:app\nlazy-apps = true\n"},
        "NOTE (uWSGI): lazy-apps: each worker imports the app itself",
    ),
    "dramatiq": ("import dramatiq\n", {}, "NOTE (dramatiq): each worker process imports"),
    "huey": ("import huey\n", {}, "NOTE (huey): huey_consumer imports this module"),
    "fastapi": (
        "from fastapi import FastAPI\napp = FastAPI()\n",
        {},
        "NOTE (FastAPI/Starlette): call the model from a plain def endpoint",
    ),
}


@pytest.mark.parametrize("server", sorted(SERVED))
def test_doctor_recognises_the_server_and_gives_its_guides_advice(
    tmp_path: Any, server: str
) -> None:
    """A clean module run by each server or queue: exit 0, its advice and its guide named."""
    source, files, expected = SERVED[server]
    (tmp_path / "served_app.py").write_text(source + CLEAN)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = forksafe_cli("doctor", "served_app", env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout, done.stdout
    assert "Guide: forksafe's docs, guides/" in done.stdout
    fork_per_job = "FORK PER JOB" in expected
    assert ("forksafe warns after 5" in done.stdout) == fork_per_job, done.stdout
    assert not fork_per_job or "isolation='shared'" in done.stdout
    assert done.stdout.count("NOTE") + done.stdout.count("FORK PER JOB") == 1, done.stdout


def test_doctor_says_nothing_of_servers_for_a_plain_module(tmp_path: Any) -> None:
    """A module that no server imports or configures: no advice line."""
    (tmp_path / "plain_tasks.py").write_text(CLEAN)
    done = forksafe_cli("doctor", "plain_tasks", env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "NOTE" not in done.stdout and "FORK PER JOB" not in done.stdout
