"""How the sections write their figures: cells, targets and the rows several tables share.

A section's ``render`` returns Markdown lines; its ``main`` prints them after measuring and
``benchmarks/report.py`` puts the same lines into RESULTS.md, so each table is written once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._common import write_json

Render = Callable[[dict[str, Any]], list[str]]


def mmm(s: dict[str, float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """A summary as *median (min-max)*, each value times ``scale``."""
    return f"{s['median'] * scale:{fmt}} ({s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}})"


def ratios(values: list[float]) -> str:
    """Per-round ratios, two decimals each."""
    return ", ".join(f"{v:.2f}" for v in values)


def target(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    *,
    most: bool,
    interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """One row of RESULTS.md's targets: ``value`` against ``limit`` (``most``: an upper bound).

    ``value`` is None when the section was not measured (or skipped): the row says so.
    """
    met = value is not None and (value <= limit if most else value >= limit)
    shown = "not measured" if value is None else f"{value:.4g}{unit}"
    if value is not None and interval is not None:
        shown += f" (95 % interval {interval[0]:.3f}-{interval[1]:.3f})"
    sign = "≤" if most else "≥"
    return {"target": f"{name} {sign} {limit:g}{unit}", "value": shown, "met": met}


OVERHEAD_HEADER = [
    "| model | call | bare µs | proxy µs | ratio (95 % interval) | added |",
    "| --- | --- | --- | --- | --- | --- |",
]


def overhead_rows(rows: dict[str, Any], label: str) -> list[str]:
    """Rows of a proxy-vs-bare table (``_common.compare`` results, by call)."""
    return [
        f"| {label} | `{call}` | {mmm(row['bare_us'], fmt='.2f')} | "
        f"{mmm(row['proxy_us'], fmt='.2f')} | {row['ratio']:.3f} "
        f"({row['ratio_ci95'][0]:.3f}-{row['ratio_ci95'][1]:.3f}) | "
        f"{row['added_ns'] / 1000:+.2f} µs |"
        for call, row in rows.items()
    ]


def skipped(part: dict[str, Any]) -> list[str]:
    """The line a section renders when its service was missing."""
    return [f"Skipped: {part['skipped']}."]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def emit(path: str | None, report: dict[str, Any], render: Render) -> None:
    """End of a section's ``main``: write ``report`` to ``path`` (if given), print its tables."""
    write_json(path, report)
    print("\n".join(render(report)), flush=True)
