"""Every public name has a docstring and typed parameters: the API reference is built from them."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import itertools
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

import forksafe

# The public modules and what they export. The pytest plugin has no __all__:
# its public names are its hooks, fixtures and helpers (no leading underscore).
PUBLIC_MODULES = ("forksafe", "forksafe.testing", "forksafe.celery", "forksafe.gunicorn")
PLUGIN = "pytest_forksafe"
PACKAGE_DIR = pathlib.Path(forksafe.__file__).parent


def _plugin_names() -> list[str]:
    module = importlib.import_module(PLUGIN)
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or type(value).__name__ == "FixtureFunctionDefinition")
        and getattr(value, "__module__", PLUGIN) == PLUGIN
    )


def public_names() -> Iterator[tuple[str, str]]:
    """(module, name) for every exported name."""
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            yield module_name, name
    for name in _plugin_names():
        yield PLUGIN, name


NAMES = sorted(public_names())


def attribute_docstrings() -> dict[str, str]:
    """Docstrings written under module-level assignments anywhere in the package."""
    found: dict[str, str] = {}
    for path in PACKAGE_DIR.glob("*.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.Assign)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = after.value.value
    return found


def own_doc(value: Any) -> str:
    """The object's own docstring: not inherited, not dataclass-generated."""
    doc = getattr(value, "__doc__", None) or ""
    if inspect.isclass(value) and dataclasses.is_dataclass(value):
        generated = value.__name__ + str(inspect.signature(value)).replace(" -> None", "")
        if doc == generated:
            return ""
    return inspect.cleandoc(doc)


def functions_of(value: Any) -> Iterator[tuple[str, Any]]:
    """The value itself if it is a function, or a class's own public methods."""
    if inspect.isfunction(value):
        yield value.__name__, value
    elif inspect.isclass(value):
        for name, member in vars(value).items():
            if inspect.isfunction(member) and (not name.startswith("_") or name == "__init__"):
                yield f"{value.__name__}.{name}", member


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_name_has_a_docstring(module: str, name: str) -> None:
    """Functions, classes and constants each carry their own docstring."""
    value = getattr(importlib.import_module(module), name)
    if inspect.isfunction(value) or inspect.isclass(value) or callable(value):
        assert own_doc(value), f"{module}.{name} has no docstring"
    else:
        assert attribute_docstrings().get(name), f"{module}.{name} has no attribute docstring"


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_signatures_are_typed(module: str, name: str) -> None:
    """Every parameter and return value of public functions and methods is annotated."""
    value = getattr(importlib.import_module(module), name)
    value = getattr(value, "__wrapped__", value)  # pytest fixtures wrap the function
    for qualname, function in functions_of(value):
        signature = inspect.signature(function)
        for parameter in signature.parameters.values():
            if parameter.name in ("self", "cls"):
                continue
            assert parameter.annotation is not inspect.Parameter.empty, (
                f"{module}.{qualname}: parameter {parameter.name!r} has no type"
            )
        assert signature.return_annotation is not inspect.Signature.empty, (
            f"{module}.{qualname} has no return type"
        )


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_methods_and_fields_are_documented(module: str, name: str) -> None:
    """A public class documents its public methods, properties and dataclass fields."""
    value = getattr(importlib.import_module(module), name)
    if not inspect.isclass(value):
        return
    for member_name, member in vars(value).items():
        if member_name.startswith("_"):
            continue
        if inspect.isfunction(member) or isinstance(member, property):
            assert own_doc(member), f"{module}.{name}.{member_name} has no docstring"
    if dataclasses.is_dataclass(value):
        doc = own_doc(value)
        for item in dataclasses.fields(value):
            assert re.search(rf"^\s*{item.name}:", doc, re.MULTILINE), (
                f"{module}.{name}: field {item.name!r} is not under Attributes: in its docstring"
            )


def test_the_plugin_names_were_found() -> None:
    """The plugin scan sees its fixtures and hooks (guards the scan itself)."""
    names = _plugin_names()
    assert {"run_in_fork", "assert_fork_safe", "forksafe_proxy", "pytest_addoption"} <= set(names)
