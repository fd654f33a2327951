"""The suite's own rules, checked over its code: one way to skip for something missing.

A skip for a missing package or service goes through ``tests/support/requires.py``
(it fails under ``CI=true``); any other skip names its reason, and that reason is
not a missing package or service. No ``pytest.importorskip`` anywhere else, no
``CI`` check of a test's own, no skip inside ``except ImportError``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support import requires
from tests.support.workers import ROOT

_HELPER = Path(ROOT, "tests", "support", "requires.py")
_MISSING = re.compile(r"install|reachable|not available|no module|missing|cannot import", re.I)
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "OSError", "ConnectionError"}


def _suite() -> list[Path]:
    return sorted(path for path in Path(ROOT, "tests").rglob("*.py") if path != _HELPER)


def _name(node: ast.AST) -> str:
    """``pytest.mark.skipif`` for such an attribute chain, ``""`` otherwise."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _text(node: ast.AST | None) -> str | None:
    """A reason's literal text (an f-string's literal parts); ``None`` if not literal."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant))
    return None


def _reason(call: ast.Call) -> ast.AST | None:
    for keyword in call.keywords:
        if keyword.arg in ("reason", "msg"):
            return keyword.value
    positional = 1 if _name(call.func).endswith("skipif") else 0
    return call.args[positional] if len(call.args) > positional else None


def violations(source: str, where: str) -> list[str]:
    """Where ``source`` breaks the skip rule, one line each."""
    found = []
    tree = ast.parse(source)
    handlers = [h for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler)]
    in_import_handler = {
        id(node)
        for handler in handlers
        if handler.type is not None and {_name(n) for n in ast.walk(handler.type)} & _IMPORT_ERRORS
        for statement in handler.body
        for node in ast.walk(statement)
    }
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Constant) and node.value == requires.CI_FLAG:
            found.append(f"{at}: a CI check of its own (use tests/support/requires.py)")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name.endswith("importorskip"):
            found.append(f"{at}: importorskip (use requires.package)")
        elif name in ("pytest.skip", "pytest.mark.skipif", "pytest.mark.skip"):
            text = _text(_reason(node))
            if text is None:
                found.append(f"{at}: {name} without a literal reason naming it")
            elif _MISSING.search(text):
                found.append(f"{at}: {name} for something missing ({text!r}): use requires")
            if id(node) in in_import_handler:
                found.append(f"{at}: {name} on an import error (use requires.package)")
    return found


def test_every_skip_for_something_missing_goes_through_requires() -> None:
    """No module of the suite skips for a missing package or service but through requires."""
    found = [
        line
        for path in _suite()
        for line in violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'import pytest\ncelery = pytest.importorskip("celery")\n',
        'import os\nif os.environ.get("CI") == "true":\n    pass\n',
        'import pytest\ntry:\n    import ray\nexcept ImportError:\n    pytest.skip("later")\n',
        'import pytest\npytest.skip("redis not reachable")\n',
        "import pytest\nreason = 'x'\npytest.skip(reason)\n",
        'import pytest\nmark = pytest.mark.skipif(True, reason="gevent is not installed")\n',
    ],
    ids=[
        "importorskip",
        "own-CI-check",
        "skip-on-ImportError",
        "unreachable",
        "no-literal",
        "mark",
    ],
)
def test_the_rule_catches_each_way_round_it(source: str) -> None:
    """Each way of skipping around ``requires`` is reported (the check above can fail)."""
    assert violations(source, "example.py")


def test_a_platform_skip_naming_its_reason_passes() -> None:
    """A skip for a platform reason, named, is allowed."""
    source = 'import pytest\npytest.mark.skipif(True, reason="needs root to act as another user")\n'
    assert violations(source, "example.py") == []


def test_missing_skips_here_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """``requires.missing``: a skip on a developer's machine, a failure under ``CI=true``."""
    monkeypatch.delenv(requires.CI_FLAG, raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install nothing-such"):
        requires.package("nothing_such_package_here", "nothing-such")
    monkeypatch.setenv(requires.CI_FLAG, "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        requires.package("nothing_such_package_here", "nothing-such")
    with pytest.raises(pytest.fail.Exception, match="not reachable"):
        requires.service("redis://127.0.0.1:1/0", "Redis")  # port 1: nothing listens there
