"""What the docs state matches the results, the code and the test suite.

tests/integration/test_docs.py runs the pages' examples; this module checks the
rest: measured figures come from benchmarks/bench-results.json (through
docs/_hooks/figures.py), never typed in by hand; no user page names a private
module; lists on the pages (``ProxyInfo``'s fields, the examples) are complete;
quoted messages are what forksafe prints; the support matrix is what the suite's
markers say.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import forksafe
from tests.models import Models
from tests.workers.harness import ROOT

DOCS = Path(ROOT) / "docs"
HOOKS = DOCS / "_hooks"
# For contributors: they may name the code's private parts.
AUTHOR_PAGES = {"contributing.md", "internals.md"}

FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]+`")
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
NUMBER = r"\d[\d,]*(?:\.\d+)?"
FIGURE = re.compile(
    rf"(?<![\w.]){NUMBER}(?:\s?[\u2013-]\s?{NUMBER})?\s?"
    r"(?:ns|µs|us|ms|s|seconds|minutes|min|kB|KiB|MB|MiB|GB|GiB|MB/s|GB/s|x|%|times)(?![\w/])"
)
# Numbers with units that are not measurements: settings, limits, targets, facts of
# other software. Anything else on a page must be a {{ fig.NAME }} placeholder.
NOT_MEASURED = {
    "README.md": set(),
    "isolation.md": {"1 MiB", "64 MB"},
    "glossary.md": {"1 MiB"},
    "configuration.md": set(),
    "migration.md": {"4 s"},
    "guides/celery.md": {"4 s"},
    "guides/host.md": {"1 MiB", "64 MB"},
    "guides/host-failures.md": {"120 s"},
    "guides/shared.md": {"5 ms", "120 s", "10 seconds", "0 ms", "2 ms"},
    "guides/shared-production.md": {"120 s", "10 seconds"},
    "guides/torch-pool.md": {"20 ms"},
    "benchmark-notes.md": {"150 µs", "4 KiB", "64 MB", "95 %"},
    "benchmarks.md": {"64 MB"},
    "symptoms/fork-hang.md": {"0%"},
    "testing.md": {"30 s"},
    "reference/testing.md": {"30 s"},
    "troubleshooting.md": {"120 s"},
    "symptoms/index.md": set(),
    # Settings: the shared host's grace, RQ's default job_timeout, dramatiq's time_limit.
    "guides/rq.md": {"10 seconds", "180 s"},
    "guides/recycling.md": {"10 seconds"},
    "guides/dramatiq.md": {"10 minutes"},
}


def load_hook(name: str) -> ModuleType:
    """A module of docs/_hooks (not a package: the build loads them by path)."""
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def user_pages() -> list[Path]:
    """Every page a user reads: the site's pages (but the contributors'), the README."""
    pages = [p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts]
    return [*sorted(p for p in pages if p.name not in AUTHOR_PAGES), Path(ROOT) / "README.md"]


def name_of(page: Path) -> str:
    """A page's path as NOT_MEASURED names it."""
    return page.name if page.parent == Path(ROOT) else page.relative_to(DOCS).as_posix()


def prose(text: str) -> str:
    """``text`` without code blocks, code spans, comments and figure placeholders."""
    figures = load_hook("figures")
    for pattern in (FENCE, COMMENT, figures.PLACEHOLDER, CODE):
        text = pattern.sub(" ", text)
    return text


def test_every_placeholder_renders_from_the_results() -> None:
    """Each page's figures and tables render; an unknown name fails (as the build does)."""
    figures = load_hook("figures")
    rendered = 0
    for page in user_pages():
        text = page.read_text(encoding="utf-8")
        out = figures.render(text, name_of(page))
        assert "{{" not in out, f"{name_of(page)}: a placeholder left unrendered"
        rendered += len(figures.PLACEHOLDER.findall(text))
    assert rendered > 50  # the mechanism is in use, not bypassed
    with pytest.raises(ValueError, match="no fig named 'nonsense'"):
        figures.render("{{ fig.nonsense }}")


def test_a_figure_follows_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Change a figure in the results and the page says the new one: nothing is cached."""
    figures = load_hook("figures")
    results = json.loads(figures.RESULTS.read_text(encoding="utf-8"))
    results["sections"]["host"]["per_call"]["added_us"] = 1234.0
    moved = tmp_path / "benchmarks" / "bench-results.json"
    moved.parent.mkdir()
    moved.write_text(json.dumps(results), encoding="utf-8")
    monkeypatch.setattr(figures, "RESULTS", moved)
    figures.results.cache_clear()
    assert figures.render("adds {{ fig.host_added_us }} µs") == "adds 1234 µs"


def test_no_measured_figure_is_typed_into_a_page() -> None:
    """Numbers with units on user pages are placeholders, or listed as not measured."""
    typed = {}
    for page in user_pages():
        found = set(FIGURE.findall(prose(page.read_text(encoding="utf-8"))))
        extra = found - NOT_MEASURED.get(name_of(page), set())
        if extra:
            typed[name_of(page)] = sorted(extra)
    assert not typed, (
        "figures typed by hand (write {{ fig.NAME }}, defined in docs/_hooks/figures.py, or "
        f"list a setting in NOT_MEASURED): {typed}"
    )


def test_the_scanner_sees_a_typed_figure() -> None:
    """The check above can fail: a figure in prose is found, one in code is not."""
    assert FIGURE.findall(prose("a host adds ~222 µs, 0.97x the memory")) == ["222 µs", "0.97x"]
    assert FIGURE.findall(prose("`timeout=120 s` and {{ fig.host_added_us }} µs")) == []


def test_no_user_page_names_a_private_module() -> None:
    """User pages name public API only; tracebacks in quoted output may show more."""
    private = re.compile(r"\bforksafe\._(?!_)\w+|\b_self_\w+|\bRemoteModel\b|\bProxyMethod\b")
    allowed: dict[str, set[str]] = {}
    found = {}
    for page in user_pages():
        text = FENCE.sub(" ", COMMENT.sub(" ", page.read_text(encoding="utf-8")))
        names = set(private.findall(text)) - allowed.get(name_of(page), set())
        if names:
            found[name_of(page)] = sorted(names)
    assert not found, f"private names on user pages: {found}"


def test_every_proxyinfo_field_is_on_the_loading_page() -> None:
    """The loading guide lists every field of forksafe.ProxyInfo (it once lacked host_log)."""
    text = (DOCS / "guides" / "loading.md").read_text(encoding="utf-8")
    part = text[text.index("`forksafe.info(proxy)` returns a frozen `ProxyInfo`") :]
    part = part[: part.index("\n\n")]
    listed = set(re.findall(r"`(\w+)`", part))
    fields = {f.name for f in dataclasses.fields(forksafe.ProxyInfo)}
    assert fields <= listed, f"ProxyInfo fields missing in loading.md: {fields - listed}"
    for mode in ("inprocess", "process", "shared"):
        assert f'`"{mode}"`' in part


def test_examples_readme_lists_every_example() -> None:
    """examples/README.md links every example (it once left out two)."""
    examples = Path(ROOT) / "examples"
    text = (examples / "README.md").read_text(encoding="utf-8")
    for entry in sorted(examples.iterdir()):
        if entry.name in {"README.md", "__pycache__"}:
            continue
        link = entry.name + ("/" if entry.is_dir() else "")
        assert f"]({link})" in text, f"examples/README.md does not list {link}"


def _normalised(message: str) -> str:
    """A message without what changes from run to run: paths, pids, line numbers."""
    message = re.sub(r"'[^']*\.keras'", "'MODEL'", message)
    message = re.sub(r"\S+\.py:\d+", "FILE:LINE", message)
    return re.sub(r"\d+", "N", message)


@pytest.mark.timeout(300)
@pytest.mark.keras_backend("tensorflow")  # the page quotes TensorFlow's messages
def test_quoted_messages_are_what_forksafe_prints(models: Models, tmp_path: Path) -> None:
    """The warning and the error on forksafe-messages.md are those of a real poisoned child."""
    script = textwrap.dedent(
        f"""
        import json, warnings
        import numpy as np
        import forksafe
        from forksafe.testing import run_in_fork

        MODEL = forksafe.load_model({models.keras!r})
        STRICT = forksafe.load_model({models.keras!r}, isolation="inprocess")
        MODEL.predict_on_batch(np.zeros((1, 4), "float32"))  # the parent runs TensorFlow

        def child():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                MODEL.predict_on_batch(np.zeros((1, 4), "float32"))
            try:
                STRICT.predict_on_batch(np.zeros((1, 4), "float32"))
            except forksafe.InheritedRuntimeError as exc:
                return {{"warning": str(caught[0].message), "error": str(exc)}}

        print(json.dumps(run_in_fork(child, timeout=200)))
        """
    )
    (tmp_path / "poisoned.py").write_text(script, encoding="utf-8")  # a file: its line is named
    done = subprocess.run(
        [sys.executable, "poisoned.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=True,
    )
    real = json.loads(done.stdout.strip().splitlines()[-1])
    page = (DOCS / "symptoms" / "forksafe-messages.md").read_text(encoding="utf-8")
    quoted = {
        "error": re.search(r"InheritedRuntimeError: (cannot use model .*)", page),
        "warning": re.search(r"ForkSafeWarning: (model .* runs in a separate host .*)", page),
    }
    for kind, match in quoted.items():
        assert match, f"forksafe-messages.md quotes no {kind}"
        assert _normalised(match[1]) == _normalised(real[kind]), kind


def test_support_matrix_rows_follow_the_marker_convention(tmp_path: Path) -> None:
    """A marked, parametrised test gives one row per case; its backends follow CI's runs."""
    (tmp_path / "test_server.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.support("Server", "mode {mode}", start="{how}",
                                 case="{poisoned?parent ran TensorFlow}")
            @pytest.mark.parametrize("mode", ["a", "b"])
            @pytest.mark.parametrize("how", ["fork"])
            @pytest.mark.parametrize("poisoned", [False, True])
            def test_server(mode, how, poisoned):
                pass

            def test_unmarked():
                pass
            """
        ),
        encoding="utf-8",
    )
    matrix = load_hook("support_matrix")
    rows = matrix.collect.__wrapped__(str(tmp_path))
    cases = sorted((r["variant"], r["start"], r["case"], tuple(r["backends"])) for r in rows)
    assert cases == [
        ("mode a", "fork", "", ("tensorflow",)),
        ("mode a", "fork", "parent ran TensorFlow", ("tensorflow",)),
        ("mode b", "fork", "", ("tensorflow",)),
        ("mode b", "fork", "parent ran TensorFlow", ("tensorflow",)),
    ]
    table = matrix.table(rows)
    assert "| Server | mode a | fork | tested | untested | untested |" in table


def test_support_matrix_has_the_servers_the_suite_runs() -> None:
    """The real suite's markers give Celery, gunicorn and multiprocessing rows."""
    matrix = load_hook("support_matrix")
    table = matrix.table(matrix.collect.__wrapped__("tests"))
    for row in (
        "| Celery | -P prefork |",
        "| gunicorn | sync workers |",
        "| multiprocessing | Pool | spawn |",
    ):
        assert row in table, row


def test_pages_stay_short() -> None:
    """A page over about 1,200 words is split (docs/contributing.md): reading one is a task."""
    words = {name_of(p): len(p.read_text(encoding="utf-8").split()) for p in user_pages()}
    long = {name: n for name, n in words.items() if n > 1300}
    assert not long, f"split these pages: {long}"
