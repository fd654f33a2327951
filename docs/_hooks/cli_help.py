"""mkdocs hook: replace ``<!-- forksafe-help ARGS -->`` with ``forksafe ARGS --help``.

The CLI reference shows the real argparse output of the installed forksafe,
generated at build time, so it cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

_MARKER = re.compile(r"^<!-- forksafe-help(?P<args>(?: [\w-]+)*) -->$", re.MULTILINE)
_COLUMNS = "88"  # argparse wraps at the terminal width; fix it for reproducible pages


def _help(args: list[str]) -> str:
    from forksafe._cli import main

    out = io.StringIO()
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _COLUMNS
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([*args, "--help"])
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Expand every marker on the page into a console block."""

    def expand(match: re.Match[str]) -> str:
        args = match["args"].split()
        command = " ".join(["forksafe", *args, "--help"])
        return f"```console\n$ {command}\n{_help(args)}\n```"

    return _MARKER.sub(expand, markdown)
