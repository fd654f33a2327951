"""FORKSAFE_* environment variables: defaults an operator sets, never over explicit arguments."""

from __future__ import annotations

import pytest

import forksafe


def _settings(proxy: forksafe.ModelProxy) -> dict[str, tuple[object, str]]:
    return dict(forksafe.info(proxy).settings)


def test_without_arguments_or_environment_the_defaults_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No argument, no variable: auto and 120 s, each said to be the default."""
    for name in ("FORKSAFE_ISOLATION", "FORKSAFE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    proxy = forksafe.lazy_model(dict)
    assert _settings(proxy) == {"isolation": ("auto", "default"), "timeout": (120.0, "default")}


def test_the_environment_sets_what_the_code_leaves_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORKSAFE_ISOLATION=shared with batching variables: a shared proxy, each origin named."""
    monkeypatch.setenv("FORKSAFE_ISOLATION", "shared")
    monkeypatch.setenv("FORKSAFE_TIMEOUT", "7.5")
    monkeypatch.setenv("FORKSAFE_MAX_BATCH", "16")
    monkeypatch.setenv("FORKSAFE_MAX_WAIT_MS", "0")
    proxy = forksafe.load_model("m.keras")
    assert _settings(proxy) == {
        "isolation": ("shared", "environment FORKSAFE_ISOLATION"),
        "timeout": (7.5, "environment FORKSAFE_TIMEOUT"),
        "max_batch": (16, "environment FORKSAFE_MAX_BATCH"),
        "max_wait_ms": (0.0, "environment FORKSAFE_MAX_WAIT_MS"),
    }
    assert forksafe.info(proxy).isolation == "shared"


def test_explicit_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code's own choice is never overridden by a deployment's variable."""
    monkeypatch.setenv("FORKSAFE_ISOLATION", "process")
    monkeypatch.setenv("FORKSAFE_TIMEOUT", "5")
    monkeypatch.setenv("FORKSAFE_MAX_BATCH", "16")
    proxy = forksafe.lazy_model(dict, isolation="shared", timeout=30, max_batch=4)
    settings = _settings(proxy)
    assert settings["isolation"] == ("shared", "argument")
    assert settings["timeout"] == (30.0, "argument")
    assert settings["max_batch"] == (4, "argument")
    assert settings["max_wait_ms"] == (5.0, "default")


def test_batching_variables_leave_other_isolations_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """FORKSAFE_MAX_BATCH is a shared host's setting: an in-process proxy neither uses nor fails."""
    monkeypatch.setenv("FORKSAFE_ISOLATION", "inprocess")
    monkeypatch.setenv("FORKSAFE_MAX_BATCH", "16")
    proxy = forksafe.lazy_model(dict)
    assert "max_batch" not in _settings(proxy)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FORKSAFE_ISOLATION", "threads"),
        ("FORKSAFE_TIMEOUT", "soon"),
        ("FORKSAFE_TIMEOUT", "-1"),
        ("FORKSAFE_TIMEOUT", "inf"),
        ("FORKSAFE_MAX_BATCH", "2.5"),
        ("FORKSAFE_MAX_BATCH", "0"),
        ("FORKSAFE_MAX_WAIT_MS", "5000"),
    ],
)
def test_an_invalid_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """A bad value fails where the proxy is made, naming the variable and its value."""
    monkeypatch.setenv("FORKSAFE_ISOLATION", "shared")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=f"{variable}='{value}'"):
        forksafe.load_model("m.keras")


def test_an_explicit_isolation_may_be_the_enumeration(monkeypatch: pytest.MonkeyPatch) -> None:
    """forksafe.Isolation members are accepted where the mode's name is."""
    monkeypatch.delenv("FORKSAFE_ISOLATION", raising=False)
    proxy = forksafe.lazy_model(dict, isolation=forksafe.Isolation.PROCESS)
    assert forksafe.info(proxy).isolation == "process"
    assert forksafe.Isolation("shared").hosted and not forksafe.Isolation.AUTO.hosted
