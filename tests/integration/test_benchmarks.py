"""The benchmark runner end to end, with smoke counts: it runs and reports, it asserts no time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks.sections import SECTIONS
from benchmarks.servers import targets as servers_targets

from tests.support import requires

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "benchmarks"


# The quick run in three parts, so that pytest-xdist's workers share it: each part is
# a whole ``python -m benchmarks --quick --only ...`` run with its own results.
RUNS = {
    "local": ("core", "graph", "scaling", "host", "jax", "torch_fork"),
    "celery": ("celery", "pool_memory"),
    "shared": ("shared", "shared_knobs"),
}
HEADINGS = {
    "core": "## Proxy overhead",
    "graph": "## TF1 graph mode",
    "host": "## Out-of-process host",
    "scaling": "## Scaling",
    "jax": "## Keras on JAX",
    "torch_fork": "## A torch child of a parent whose thread pool started",
    "celery": "## Celery on Redis",
    "pool_memory": "## Memory of a pool whose master ran TensorFlow",
    "shared": "## One model for many workers",
    "shared_knobs": "## Shared host batching knobs",
}


def _quick_run(sections: list[str], out: Path) -> dict[str, Any]:
    """``python -m benchmarks --quick --only SECTIONS``: its results, checked whole."""
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)]
    done = subprocess.run(
        [*command, "--only", *sections],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results: dict[str, Any] = json.loads((out / "bench-results.json").read_text())
    assert set(results["sections"]) == set(sections)
    assert results["machine"]["cpus"] >= 1 and results["versions"]["forksafe"]
    measured = [t for t in results["targets"] if t["value"] != "not measured"]
    # Exactly the targets of the sections not run here are not measured (never the
    # servers' nor the separate server's: minutes of their own).
    not_run = [s.load() for s in SECTIONS if s.name not in sections]
    unmeasured = sum(len(module.targets({})) for module in not_run if hasattr(module, "targets"))
    assert unmeasured >= len(servers_targets({}))
    assert len(measured) == len(results["targets"]) - unmeasured
    text = (out / "RESULTS.md").read_text()
    assert "**quick** mode" in text and "## Targets" in text
    for section in sections:
        assert HEADINGS[section] in text, section
    return results


@pytest.mark.timeout(900)
@pytest.mark.keras_backend("tensorflow")  # the benchmarks measure Keras on TensorFlow
@pytest.mark.parametrize("run", list(RUNS))
def test_runner_writes_json_results_and_plots(run: str, tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` fills every section, every target and RESULTS.md."""
    sections = list(RUNS[run])
    if run == "local" and not requires.optional_package("torch"):  # CI installs it
        sections.remove("torch_fork")
    if run != "local":
        requires.redis_url()  # Celery's broker and the pools' queue
    results = _quick_run(sections, tmp_path)
    if run == "local":
        core = results["sections"]["core"]
        for model in ("overhead_dense", "overhead_cnn"):
            for row in core[model].values():
                bare = row["bare_us"]
                assert 0 < bare["min"] <= bare["median"] <= bare["max"]
        assert (tmp_path / "threads.png").stat().st_size > 1000
    elif run == "celery":
        assert (tmp_path / "celery.png").exists()
    else:
        shared = results["sections"]["shared"]["shared"]
        for kind in ("celery", "gunicorn"):
            batched, alone = shared[kind]["shared, batching"], shared[kind]["shared, max_batch=1"]
            for row in (batched, alone):
                # One host served the pool, counted in its memory; no worker imported TensorFlow.
                assert row["in_effect"] == ["shared"] and row["hosts"] == 1
                assert row["processes"]["host"] == 1 and row["pss_by_role_mb"]["host"] > 0
                assert row["workers_imported_tensorflow"] == 0
                assert len(row["rounds"]) == len(row["requests_per_s_ratios"]) >= 1
            inprocess = shared[kind]["in-process"]
            assert inprocess["in_effect"] == ["inprocess"] and "host" not in inprocess["processes"]


@pytest.mark.timeout(300)
def test_committed_results_md_is_the_committed_json_rendered(tmp_path: Path) -> None:
    """``--render`` of bench-results.json gives RESULTS.md as committed, byte for byte.

    Each section renders its own tables (benchmarks/sections.py): a section whose
    ``render`` changed, or a RESULTS.md edited by hand, shows here. Regenerate with
    ``python -m benchmarks --render``.
    """
    requires.package("matplotlib", "pip install -e '.[bench]'")  # the plots' sections
    shutil.copy(COMMITTED / "bench-results.json", tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--render", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "RESULTS.md").read_text() == (COMMITTED / "RESULTS.md").read_text()
    rendered = json.loads((tmp_path / "bench-results.json").read_text())
    assert rendered == json.loads((COMMITTED / "bench-results.json").read_text())


def test_section_modules_import_without_side_effects() -> None:
    """Importing every section (as the runner and the docs do) starts no framework.

    It sets no environment variable either (beyond ``_common``'s TensorFlow log level):
    ``KERAS_BACKEND=jax`` set at import by one section would reach every later section
    the runner starts.
    """
    script = """
import json, os, sys
before = dict(os.environ)
from benchmarks.sections import SECTIONS
missing = [s.name for s in SECTIONS if not callable(getattr(s.load(), "render", None))]
changed = sorted(k for k in set(before) | set(os.environ)
                 if before.get(k) != os.environ.get(k) and k != "TF_CPP_MIN_LOG_LEVEL")
frameworks = sorted(m for m in ("tensorflow", "keras", "jax", "torch") if m in sys.modules)
print(json.dumps([missing, changed, frameworks]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "TF_USE_LEGACY_KERAS")}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=True,
    )
    missing, changed, frameworks = json.loads(done.stdout.strip().splitlines()[-1])
    assert missing == [], f"sections without render(): {missing}"
    assert changed == [], f"importing the sections changed the environment: {changed}"
    assert frameworks == [], f"importing the sections imported {frameworks}"
