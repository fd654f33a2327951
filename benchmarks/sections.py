"""The benchmark sections, in the order RESULTS.md shows them: one line here adds a section.

A section is a module ``benchmarks/<module>.py`` with

- ``main(argv)``: measures, then ``_render.emit(args.json, report, render)`` (writes the
  JSON the runner asked for with ``--json FILE`` and prints the section's tables);
- ``render(data) -> list[str]``: its Markdown, a ``## Title (`benchmarks/<module>.py`)``
  heading first. ``data`` is the JSON it wrote (the runner adds ``wall_s`` and ``machine``);
- optionally ``targets(data) -> list[dict]`` (rows made with ``_render.target``; ``data``
  is ``{}`` when the section was not run, and each row then reads "not measured") and
  ``plots(data, out) -> list[(title, file name)]`` (PNG files written into ``out``).

Importing a section module must do no work and set no environment variable: the runner
and the docs import them to render (set ``KERAS_BACKEND`` and the like in ``main``).
See benchmarks/README.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

# Tiny pools for --quick: 2 workers, a small model, a second of load, one round, memory
# taken while the pools of a server are all alive (not comparable: a smoke run).
_SMALL_POOLS = (
    "--workers", "2", "--hidden", "256", "--seconds", "1", "--warm", "0.5", "--rounds", "1",
    "--settle", "0.5", "--no-memory-alone",
)  # fmt: skip


# The same for one server kind (Celery) that takes no memory-alone switch.
_SMALL_CELERY = (
    "--workers", "2", "--hidden", "256", "--seconds", "1", "--warm", "0.5", "--rounds", "1",
    "--settle", "0.5",
)  # fmt: skip


@dataclass(frozen=True)
class Section:
    """One benchmark section: its key in bench-results.json and how to run it."""

    name: str
    module: str
    quick: tuple[str, ...] = ()  # arguments for ``--quick`` (smoke counts)
    timeout_s: float = 600.0  # for the full run

    def load(self) -> ModuleType:
        """The section's module (importing it does no work)."""
        return importlib.import_module(self.module)


SECTIONS = (
    Section("core", "benchmarks.core", ("--rounds", "3", "--calls", "20", "--forks", "2")),
    Section("graph", "benchmarks.graph", ("--rounds", "3", "--calls", "20")),
    Section("host", "benchmarks.host", ("--rounds", "2", "--calls", "20")),
    Section("celery", "benchmarks.celery_pools", ("--tasks", "20", "--repeat", "1")),
    Section("pool_memory", "benchmarks.pool_memory", ("--children", "2", "--hidden", "64")),
    Section("shared", "benchmarks.shared", _SMALL_POOLS, timeout_s=1800.0),
    Section(
        "shared_knobs",
        "benchmarks.shared_knobs",
        (*_SMALL_POOLS, "--alone", "0.5", "--grid", "8:0", "64:2"),
        timeout_s=1800.0,
    ),
    Section("separate_server", "benchmarks.separate_server", _SMALL_CELERY, timeout_s=1800.0),
    Section("scaling", "benchmarks.scaling", ("--rounds", "2")),
    Section("jax", "benchmarks.jax_threads", ("--rounds", "1", "--calls", "10")),
    Section("torch_fork", "benchmarks.torch_fork", ("--calls", "5")),
    Section("engines", "benchmarks.engines", ("--batches", "4")),
    Section(
        "servers",
        "benchmarks.servers",
        ("--jobs", "4", "--requests", "12", "--rounds", "1"),
        timeout_s=1800.0,
    ),
)

BY_NAME = {section.name: section for section in SECTIONS}
