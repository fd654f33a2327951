"""pytest plugin: the support matrix's rows, from the tests that carry ``@pytest.mark.support``.

Loaded only by docs/_hooks/support_matrix.py (``pytest --collect-only -p
support_collect``), which gives the output file in ``FORKSAFE_SUPPORT_JSON``.
For each collected test with the marker it writes one row: the server, the
variant and the start method (each a template filled from the test's own
parameters), the case, and the Keras backends CI runs it under.

The marker (registered in pyproject.toml; the convention is in docs/contributing.md)::

    @pytest.mark.support("Celery", "-P {pool}", start="fork", case="parent ran TF")

- first argument: the server, queue or engine (a row group of the matrix);
- second: the variant, a ``str.format`` template over the test's parameters
  (``"-P {pool}"`` under ``@pytest.mark.parametrize("pool", [...])``);
  ``{name?text}`` reads ``text`` where the parameter ``name`` is true, else nothing;
- ``start``: the start method of the workers where the test chooses it
  (``"{method}"``: fork, spawn, forkserver), a template too;
- ``case``: what the test adds to the plain case (``"{parent_ran_tf?parent ran
  TensorFlow}"``, ``'isolation="shared"'``), a template too;
- ``frameworks``: for a test of models that are not Keras (a torch module, a JAX
  function), the frameworks it tests, instead of the Keras backends CI runs it under.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

# What each run of CI covers: the whole suite on TensorFlow, the backend_suite on JAX and torch.
ALL_BACKENDS = ("tensorflow", "jax", "torch")


def backends(item: pytest.Item) -> list[str]:
    """The Keras backends under which CI runs ``item`` (tests/conftest.py's rules)."""
    runs = ALL_BACKENDS if item.get_closest_marker("backend_suite") else ("tensorflow",)
    for marker in item.iter_markers("keras_backend"):
        runs = tuple(name for name in runs if name in marker.args)
    return list(runs)


class Params(dict[str, Any]):
    """A test's parameters for ``str.format_map``; ``{name?text}``: text where name is true."""

    def __missing__(self, key: str) -> str:
        name, _, text = key.partition("?")
        if not text or name not in self:
            raise KeyError(f"no parameter {name!r} for the support marker's {{{key}}}")
        return text if self[name] else ""


def row(item: pytest.Item, marker: pytest.Mark) -> dict[str, Any]:
    """One test's row, its templates filled from its parameters."""
    callspec = getattr(item, "callspec", None)
    params = Params(callspec.params if callspec else {})
    server, variant = (*marker.args, "")[:2]

    def fill(template: str) -> str:
        return template.format_map(params).strip()

    return {
        "test": item.nodeid,
        "server": server,
        "variant": fill(variant),
        "start": fill(marker.kwargs.get("start", "")),
        "case": fill(marker.kwargs.get("case", "")),
        "backends": list(marker.kwargs.get("frameworks", ())) or backends(item),
    }


def pytest_collection_finish(session: pytest.Session) -> None:
    """Write every marked test's row to ``$FORKSAFE_SUPPORT_JSON``."""
    rows = []
    for item in session.items:
        for marker in item.iter_markers("support"):
            rows.append(row(item, marker))
    with open(os.environ["FORKSAFE_SUPPORT_JSON"], "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
