"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``docs``, ``stress``,
``bench``.

nox's default is ``lint``, ``typecheck`` and ``tests``. ``tests`` runs once per
Keras backend: ``nox -s "tests(backend='tensorflow')"`` runs the whole suite,
``nox -s "tests(backend='jax')"`` and ``"tests(backend='torch')"`` the part whose
outcome depends on the backend (``-m backend_suite``, see tests/conftest.py),
as CI does; arguments after ``--`` replace that selection.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "venv"

# torch (JAX comes with the test extra) pinned to the CPU wheel this project's
# machines carry: an unpinned torch downloads several GB of CUDA libraries.
FRAMEWORKS = ["torch==2.13.0"]


@nox.session
@nox.parametrize("backend", ["tensorflow", "jax", "torch"])
def tests(session: nox.Session, backend: str) -> None:
    session.install("-e", ".[test]", *FRAMEWORKS)
    selection = [] if backend == "tensorflow" else ["-m", "backend_suite"]
    session.run(
        "python", "-m", "pytest", *(session.posargs or selection), env={"KERAS_BACKEND": backend}
    )


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.10", "pytest")
    session.run("mypy", *session.posargs)


@nox.session
def stress(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "-s",
        "-n",
        "0",  # one process: the stress figures are not taken beside one another
        "tests/stress",
        "tests/faults",
        *session.posargs,
        env={"FORKSAFE_STRESS": "full"},
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the docs site into site/, warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark; writes benchmarks/RESULTS.md, bench-results.json and plots."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
