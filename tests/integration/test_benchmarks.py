"""The benchmark runner end to end, with smoke counts: it runs and reports, it asserts no time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.celery_pools import redis_available
from benchmarks.servers import targets as servers_targets

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
@pytest.mark.keras_backend("tensorflow")  # the benchmarks measure Keras on TensorFlow
def test_runner_writes_json_results_and_plots(tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` fills every section, every target and RESULTS.md."""
    sections = ["core", "graph", "scaling", "host", "jax"]
    if redis_available():
        sections += ["celery", "pool_memory", "shared", "shared_knobs"]
    elif os.environ.get("CI") == "true":
        pytest.fail("no Redis server on 127.0.0.1:6379 (CI=true: a missing broker is a failure)")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)]
    done = subprocess.run(
        [*command, "--only", *sections],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "bench-results.json").read_text())
    assert set(results["sections"]) == set(sections)
    assert results["machine"]["cpus"] >= 1 and results["versions"]["forksafe"]
    measured = [t for t in results["targets"] if t["value"] != "not measured"]
    # Without Redis: the Celery, pool memory and shared host targets are not measured;
    # the servers' (benchmarks/servers.py, minutes of its own) are not run here.
    servers = len(servers_targets(None))
    assert len(measured) == len(results["targets"]) - (0 if "celery" in sections else 7) - servers
    core = results["sections"]["core"]
    for model in ("overhead_dense", "overhead_cnn"):
        for row in core[model].values():
            assert 0 < row["bare_us"]["min"] <= row["bare_us"]["median"] <= row["bare_us"]["max"]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "**quick** mode" in text
    headings = (
        "## Targets",
        "## Proxy overhead",
        "## Out-of-process host",
        "## Scaling",
        "## Keras on JAX",
    )
    for heading in headings:
        assert heading in text
    assert (tmp_path / "threads.png").stat().st_size > 1000
    if "celery" in sections:
        assert "## Celery on Redis" in text and (tmp_path / "celery.png").exists()
        assert "## Memory of a pool whose master ran TensorFlow" in text
        assert "## One model for many workers" in text and "## Shared host batching knobs" in text
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
