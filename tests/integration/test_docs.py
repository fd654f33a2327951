"""Every Python example in the docs and the README runs, so none of them rots.

Each page's ```python blocks run in order, as one script, in a fresh
interpreter whose working directory holds a real tiny ``model.keras`` (Keras 3)
and ``model.h5`` (tf_keras), bounded by a timeout that kills the whole process
group. Two kinds of block are treated specially:

- A block whose first line is ``# some/file.py`` is written to that path and
  imported (as ``some.file``) where it appears, so later blocks can use it.
  Files named ``test_*.py`` are run with pytest after the page's script
  instead, with forksafe's pytest plugin loaded as it is for users.
- A block that starts with ``--8<--`` includes example files at build time
  (pymdownx.snippets); ``tests/integration/test_examples.py`` runs those
  examples against real workers, so here we only check the paths. Use the
  block form (``--8<--``, one path per line, ``--8<--``): ``ruff format``
  formats Python blocks in Markdown and would rewrite the one-line form
  ``--8<-- "path"``, which is valid Python, into ``--8 < --"path"``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.models import Models
from tests.support.procs import stop_group
from tests.support.workers import ROOT

PAGE_TIMEOUT = 150.0  # seconds for one page's script and tests, TensorFlow imports included
pytestmark = pytest.mark.timeout(PAGE_TIMEOUT + 30)

# A fenced block, possibly indented (inside a list or an admonition).
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
FILE_HEADER = re.compile(r"^# (?P<path>[\w./-]+\.py)$")
SNIPPET = "--8<--"
# Python under another name would silently escape the runner.
OTHER_PYTHON_FENCES = {"py", "python3", "pycon", "ipython", "pyi"}


@dataclass
class Page:
    """The Python of one Markdown page: the script, the files it writes, the includes."""

    path: Path
    script: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        root = Path(ROOT)
        return (
            self.path.relative_to(root).as_posix()
            if self.path.is_relative_to(root)
            else str(self.path)
        )


def pages() -> list[Path]:
    """Every Markdown page of the site, and the README."""
    docs = Path(ROOT) / "docs"
    found = sorted(p for p in docs.rglob("*.md") if "_hooks" not in p.parts)
    return [*found, Path(ROOT) / "README.md"]


def parse(path: Path) -> Page:
    """Split a page's Python blocks into script, files and includes."""
    page = Page(path)
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        lang = match["lang"]
        if lang in OTHER_PYTHON_FENCES:
            line = text.count("\n", 0, match.start()) + 1
            raise AssertionError(f"{page.name}:{line}: use ```python, not ```{lang}")
        if lang != "python":
            continue
        indent = match["indent"]
        lines = [
            ln[len(indent) :] if ln.startswith(indent) else ln for ln in match["body"].split("\n")
        ]
        body = "\n".join(lines).strip("\n") + "\n"
        first = body.split("\n", 1)[0]
        line = text.count("\n", 0, match.start()) + 2
        if first.startswith(SNIPPET):
            page.includes += included_paths(body)
        elif header := FILE_HEADER.match(first):
            target = header["path"]
            assert target not in page.files, f"{page.name}:{line}: {target} written twice"
            page.files[target] = body
            if not Path(target).name.startswith("test_"):
                module = target.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
                page.script.append(f"# --- {page.name}:{line}: {target}\n")
                page.script.append(f"__import__('importlib').import_module({module!r})\n")
        else:
            page.script.append(f"# --- {page.name}:{line}\n{body}")
    return page


def included_paths(body: str) -> list[str]:
    """The files a snippets block includes, in its one-line or its block form."""
    paths = []
    for line in body.strip().split("\n"):
        line = line.strip()
        if line.startswith(SNIPPET):
            rest = line.removeprefix(SNIPPET).strip()
            if rest:
                paths.append(rest.strip('"'))
        elif line:
            paths.append(line)
    return paths


def runnable() -> list[Page]:
    """The pages that have Python to run."""
    return [page for page in map(parse, pages()) if page.script or page.files]


def run_bounded(args: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run ``args`` in its own process group; kill the group on timeout or when done."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONDONTWRITEBYTECODE": "1"}
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process, grace=2.0)
        output, _ = process.communicate()
        return -1, f"(killed after {timeout:.0f} s)\n{output}"
    finally:
        stop_group(process, grace=2.0)  # anything it left behind
    return process.returncode, output


@pytest.fixture
def workdir(models: Models, tmp_path: Path) -> Path:
    """A directory with the models the docs name: model.keras and a tf_keras model.h5."""
    shutil.copy(models.keras, tmp_path / "model.keras")
    shutil.copy(models.tf_keras_h5, tmp_path / "model.h5")
    return tmp_path


@pytest.mark.parametrize("page", runnable(), ids=lambda page: page.name)
def test_page_examples_run(page: Page, workdir: Path) -> None:
    """The page's Python blocks run without error, in order, in a fresh interpreter."""
    for relative, body in page.files.items():
        target = workdir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
    if page.script:
        (workdir / "page.py").write_text("".join(page.script), encoding="utf-8")
        code, output = run_bounded([sys.executable, "page.py"], workdir, PAGE_TIMEOUT)
        assert code == 0, f"{page.name}: the page's Python blocks failed (exit {code}):\n{output}"
    tests = [name for name in page.files if Path(name).name.startswith("test_")]
    if tests:
        pytest_args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
        code, output = run_bounded(pytest_args, workdir, PAGE_TIMEOUT)
        assert code == 0, f"{page.name}: the page's tests failed (exit {code}):\n{output}"


def test_included_examples_are_run_by_the_suite() -> None:
    """Every file the docs include comes from examples/, which test_examples.py runs."""
    included = {path for page in map(parse, pages()) for path in page.includes}
    for path in sorted(included):
        assert path.startswith("examples/"), f"docs include {path!r}, which no test runs"
        assert (Path(ROOT) / path).is_file(), f"docs include {path!r}, which does not exist"


def test_runner_fails_on_a_failing_block(tmp_path: Path) -> None:
    """A block that raises fails its page: the runner cannot pass silently."""
    bad = tmp_path / "bad.md"
    bad.write_text("# Bad\n\n```python\nraise ValueError('boom')\n```\n", encoding="utf-8")
    page = parse(bad)
    (tmp_path / "page.py").write_text("".join(page.script), encoding="utf-8")
    code, output = run_bounded([sys.executable, "page.py"], tmp_path, 30)
    assert code != 0 and "boom" in output


def test_runner_kills_a_hanging_block(tmp_path: Path) -> None:
    """A block that hangs is killed at the deadline, with the page's process group."""
    (tmp_path / "page.py").write_text("import time\ntime.sleep(60)\n", encoding="utf-8")
    code, output = run_bounded([sys.executable, "page.py"], tmp_path, 1)
    assert code == -1 and "killed after" in output


def test_file_blocks_includes_and_fences(tmp_path: Path) -> None:
    """``# name.py`` blocks become files, snippets are includes, other Python fences fail."""
    text = "```python\n# pkg/mod.py\nX = 1\n```\n\n```python\nfrom pkg.mod import X\n```\n"
    (tmp_path / "ok.md").write_text(text, encoding="utf-8")
    page = parse(tmp_path / "ok.md")
    assert page.files == {"pkg/mod.py": "# pkg/mod.py\nX = 1\n"}
    assert "import_module('pkg.mod')" in "".join(page.script)
    snippets = '```python\n--8<--\nexamples/a.py\n--8<--\n```\n\n```python\n--8<-- "b.py"\n```\n'
    (tmp_path / "inc.md").write_text(snippets, encoding="utf-8")
    assert parse(tmp_path / "inc.md").includes == ["examples/a.py", "b.py"]
    (tmp_path / "py.md").write_text("```py\nx = 1\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="use ```python"):
        parse(tmp_path / "py.md")
