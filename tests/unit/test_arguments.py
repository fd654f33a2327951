"""Wrong arguments fail at creation with a message that says what to pass instead."""

from __future__ import annotations

import pathlib

import pytest

import forksafe


@pytest.mark.parametrize("source", [123, None, b"model.keras", ["a.keras"]])
def test_source_must_be_a_path(source: object) -> None:
    """A non-path source is a TypeError that points to lazy_model for code-built models."""
    with pytest.raises(TypeError, match="source must be a path"):
        forksafe.load_model(source)  # type: ignore[arg-type]


def test_empty_source() -> None:
    """An empty path is a ValueError."""
    with pytest.raises(ValueError, match="empty path"):
        forksafe.load_model("")


def test_pathlike_source_is_made_absolute(tmp_path: pathlib.Path) -> None:
    """A PathLike source is accepted and stored absolute (workers may chdir)."""
    proxy = forksafe.load_model(pathlib.Path("relative") / "m.keras")
    assert forksafe.info(proxy).source == str(pathlib.Path.cwd() / "relative" / "m.keras")


def test_loader_must_be_callable() -> None:
    """A non-callable loader is a TypeError."""
    with pytest.raises(TypeError, match="loader must be callable"):
        forksafe.load_model("m.keras", loader="keras")  # type: ignore[arg-type]


def test_factory_must_be_callable() -> None:
    """lazy_model needs a callable."""
    with pytest.raises(TypeError, match="factory must be callable"):
        forksafe.lazy_model("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("isolation", ["threads", "", 1, "AUTO"])
def test_unknown_isolation(isolation: object) -> None:
    """An unknown isolation lists the valid ones."""
    with pytest.raises(ValueError, match="isolation must be one of"):
        forksafe.load_model("m.keras", isolation=isolation)  # type: ignore[arg-type]


def test_process_isolation_is_accepted() -> None:
    """isolation="process" creates a proxy without starting anything."""
    proxy = forksafe.lazy_model(dict, isolation="process")
    info = forksafe.info(proxy)
    assert info.isolation == "process" and info.in_effect is None and info.host_pid is None


def test_info_needs_a_proxy() -> None:
    """info() on something else is a TypeError, not an AttributeError."""
    with pytest.raises(TypeError, match="ModelProxy"):
        forksafe.info(object())  # type: ignore[arg-type]
