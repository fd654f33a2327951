"""The forksafe command line: doctor on real modules, demo with a real Celery worker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest

from forksafe._frameworks import display
from tests.integration.test_celery import REDIS_URL, reachable
from tests.models import KERAS_BACKEND, Models

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


def test_doctor_reports_a_module_that_cannot_import(tmp_path: Any) -> None:
    """A missing module: exit 1 with the import error."""
    done = forksafe_cli("doctor", "no_such_module_here")
    assert done.returncode == 1
    assert "cannot import no_such_module_here: ModuleNotFoundError" in done.stdout


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
    args = ["demo", "--workers", "2", "--tasks", "6"]
    if broker == "redis":
        if not reachable(REDIS_URL):
            if os.environ.get("CI") == "true":
                pytest.fail(f"redis not reachable at {REDIS_URL} (CI=true)")
            pytest.skip(f"redis not reachable at {REDIS_URL}")
        args += ["--broker", REDIS_URL]
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
