"""mkdocs hook: replace ``<!-- support-matrix -->`` with the matrix the test suite defines.

The rows come from collecting the suite (``pytest --collect-only``, no test runs) with
docs/_hooks/support_collect.py, which reads each test's ``@pytest.mark.support``
marker and parameters; see that module and docs/contributing.md. A server gets a
row by having a test, and a backend a "tested" cell by the test running under it
in CI, so the page cannot claim what the suite does not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- support-matrix -->"
BACKENDS = {"tensorflow": "Keras on TensorFlow", "jax": "Keras on JAX", "torch": "Keras on torch"}


@cache
def collect(tests: str = "tests") -> list[dict[str, Any]]:
    """Every marked test's row (see support_collect.py), by collecting ``tests``."""
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "rows.json")
        hooks = str(Path(__file__).resolve().parent)
        env = {
            **os.environ,
            "FORKSAFE_SUPPORT_JSON": out,
            "PYTHONPATH": os.pathsep.join(filter(None, [hooks, os.environ.get("PYTHONPATH")])),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--collect-only",
                "-q",
                "-p",
                "support_collect",
                tests,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"collecting the test suite failed:\n{done.stdout[-3000:]}")
        with open(out, encoding="utf-8") as f:
            rows: list[dict[str, Any]] = json.load(f)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The matrix: one line per server, variant and start method; a cell per backend."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["server"], row["variant"], row["start"])
        entry = merged.setdefault(key, {"backends": set(), "cases": [], "tests": 0})
        entry["backends"].update(row["backends"])
        entry["tests"] += 1
        if row["case"] and row["case"] not in entry["cases"]:
            entry["cases"].append(row["case"])
    others = sorted({b for row in rows for b in row["backends"]} - set(BACKENDS))
    columns = {**BACKENDS, **{name: name for name in others}}
    head = ["server", "variant", "start method", *columns.values(), "GPU", "also tested"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (server, variant, start), entry in sorted(
        merged.items(), key=lambda kv: [k.lower() for k in kv[0]]
    ):
        cells = ["tested" if name in entry["backends"] else "untested" for name in columns]
        also = "; ".join(entry["cases"]) or "—"
        lines.append(
            "| "
            + " | ".join([server, variant or "—", start or "—", *cells, "not measured", also])
            + " |"
        )
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Put the matrix where the page asks for it."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, table(collect()))
