"""The package's layering, read from the source: the host sits below the proxy."""

from __future__ import annotations

import ast
from pathlib import Path

import forksafe

PACKAGE = Path(forksafe.__file__).parent
# What the host subpackage may use of the rest of forksafe (DESIGN.md's picture).
HOST_MAY_IMPORT = {
    "forksafe._errors",
    "forksafe._frameworks",
    "forksafe._forking",
    "forksafe._version",
}
# Modules both ends of a host's socket use; every other module's name says its side.
BOTH_SIDES = {"__init__", "wire", "plain", "shm", "identity", "runtime_dir"}


def _imports(path: Path) -> set[str]:
    """Every forksafe module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "forksafe":
                continue
            # ``from forksafe import _forking`` imports the module ``forksafe._forking``;
            # ``from forksafe import info`` imports the package itself.
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if _module(name) else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "forksafe"}
    return found


def _in_host(name: str) -> bool:
    return name == "forksafe._host" or name.startswith("forksafe._host.")


def _module(name: str) -> bool:
    return (PACKAGE.parent / (name.replace(".", "/") + ".py")).exists() or (
        PACKAGE.parent / name.replace(".", "/") / "__init__.py"
    ).exists()


def test_the_host_imports_nothing_above_it() -> None:
    """``forksafe._host`` uses only _errors, _frameworks, _forking and _version of the rest."""
    for path in sorted((PACKAGE / "_host").glob("*.py")):
        outside = {name for name in _imports(path) if _module(name) and not _in_host(name)}
        assert outside <= HOST_MAY_IMPORT, (
            f"{path.name} imports {sorted(outside - HOST_MAY_IMPORT)}"
        )


def test_only_the_proxy_opens_the_door_to_the_host() -> None:
    """Of forksafe's own modules, only ``_proxy`` (and ``_hosts``) import ``forksafe._host``."""
    users = {
        path.name for path in PACKAGE.glob("*.py") if any(_in_host(name) for name in _imports(path))
    }
    # _hosts: the operator's view of shared hosts (forksafe hosts), beside the proxy's door.
    assert users <= {"_proxy.py", "_hosts.py", "testing.py"}, users


def test_host_modules_say_which_side_of_the_socket_they_are_on() -> None:
    """``client_*`` and ``host_*`` modules; a side imports the other side's modules never."""
    for path in sorted((PACKAGE / "_host").glob("*.py")):
        name = path.stem
        if name in BOTH_SIDES:
            continue
        side, _, _ = name.partition("_")
        assert side in ("client", "host"), f"{path.name}: neither client_ nor host_"
        other = "host" if side == "client" else "client"
        crossing = {m for m in _imports(path) if m.startswith(f"forksafe._host.{other}_")}
        assert not crossing, f"{path.name} imports {sorted(crossing)}"


def test_no_function_in_the_package_is_over_60_lines() -> None:
    """A function of 60 lines or fewer (docstring included) reads in one screen."""
    long = []
    for path in sorted(PACKAGE.parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.name} ({lines})")
    assert not long, long
