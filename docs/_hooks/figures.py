"""mkdocs hook: the docs' measured figures, rendered from benchmarks/bench-results.json.

A page writes ``{{ fig.NAME }}`` where a figure goes (``adds {{ fig.host_added_us }} µs``)
and ``{{ table.NAME }}`` on a line of its own where a table goes; both are defined
below, each by where it sits in the committed results. So a page cannot drift from
benchmarks/RESULTS.md: rerun a section (``python -m benchmarks --only S --merge``) and
the next build shows its new figures. An unknown name fails the (strict) build, and
tests/integration/test_docs.py fails on a figure typed into a page by hand.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "bench-results.json"
PLACEHOLDER = re.compile(r"\{\{ (?P<kind>fig|table)\.(?P<name>\w+) \}\}")

Results = dict[str, Any]


def _at(results: Results, path: tuple[str, ...]) -> Any:
    value: Any = results
    for key in path:
        value = value[key]
    return value


def fig(*path: str, fmt: str = "{:.0f}", scale: float = 1.0) -> Callable[[Results], str]:
    """A figure at ``path`` in the results (``sections``, then the section's keys)."""
    return lambda results: fmt.format(_at(results, path) * scale)


def section(name: str, *path: str, fmt: str = "{:.0f}", scale: float = 1.0) -> Any:
    """A figure of one section: ``path`` inside ``sections[name]``."""
    return fig("sections", name, *path, fmt=fmt, scale=scale)


def _host_pss(results: Results) -> str:
    """Mean PSS of one host in the pool whose master ran TensorFlow."""
    pss = _at(results, ("sections", "pool_memory", "pool_memory", "poisoned", "pss_mb"))
    hosts = [mb for who, mb in pss.items() if who.startswith("host ")]
    return f"{sum(hosts) / len(hosts):.0f}"


def _per_worker(kind: str, config: str) -> Callable[[Results], str]:
    """PSS of one worker of a pool in benchmarks/shared.py (the workers' total / workers)."""

    def value(results: Results) -> str:
        shared = _at(results, ("sections", "shared", "shared"))
        return f"{shared[kind][config]['pss_by_role_mb']['worker'] / shared['workers']:.0f}"

    return value


HOST = ("host", "per_call")
SHARED = ("shared", "shared")
KNOBS = ("shared_knobs", "shared_knobs", "grid")
DENSE = ("core", "overhead_dense")

FIGURES: dict[str, Callable[[Results], str]] = {
    # The whole run (benchmarks/RESULTS.md's first line).
    "run_minutes": fig("wall_s", scale=1 / 60),
    # Proxy overhead (benchmarks/core.py, scaling.py, graph.py).
    "dense_pob_ratio": section(*DENSE, "predict_on_batch", "ratio", fmt="{:.3f}"),
    "dense_pob_noise": section(*DENSE, "predict_on_batch (bare vs bare)", "ratio", fmt="{:.3f}"),
    "dense_call_ratio": section(*DENSE, "__call__", "ratio", fmt="{:.3f}"),
    "attribute_bare_ns": section(*DENSE, "attribute", "bare_us", "median", scale=1e3),
    "attribute_proxy_ns": section(*DENSE, "attribute", "proxy_us", "median", scale=1e3),
    "method_call_added_ns": section("scaling", "per_call_by_live_proxies", "1", "added_ns"),
    "method_call_bare_ns": section(
        "scaling", "per_call_by_live_proxies", "1", "bare_us", "median", scale=1e3
    ),
    "method_call_proxy_ns": section(
        "scaling", "per_call_by_live_proxies", "1", "proxy_us", "median", scale=1e3
    ),
    "fork_hooks_parent_us": section(
        "scaling", "fork_hooks", "1", "parent_hooks_us", "median", fmt="{:.0f}"
    ),
    "fork_hooks_child_us": section(
        "scaling", "fork_hooks", "1", "child_hook_us", "median", fmt="{:.0f}"
    ),
    "graph_vs_hand_ratio": section(
        "graph", "graph_mode", "predict_on_batch_vs_hand_written_reentry", "ratio", fmt="{:.3f}"
    ),
    "cold_ratio": section("core", "cold_start", "ratio", fmt="{:.3f}"),
    "cold_proxy_ms": section("core", "cold_start", "seconds", "proxy", "median", scale=1e3),
    "cold_hand_ms": section("core", "cold_start", "seconds", "hand_written", "median", scale=1e3),
    "cold_min_ms": section("core", "cold_start", "seconds", "proxy", "min", scale=1e3),
    "cold_max_ms": section("core", "cold_start", "seconds", "proxy", "max", scale=1e3),
    # The host (benchmarks/host.py).
    "host_first_s": section("host", "start", "first_host_with_template_s", fmt="{:.2f}"),
    "host_later_s": section("host", "start", "later_host_with_load_s", "median", fmt="{:.3f}"),
    "spawn_keras_s": section("host", "start", "spawn_import_keras_s", "median", fmt="{:.2f}"),
    "spawn_keras_min_s": section("host", "start", "spawn_import_keras_s", "min", fmt="{:.2f}"),
    "spawn_keras_max_s": section("host", "start", "spawn_import_keras_s", "max", fmt="{:.2f}"),
    "host_noop_us": section(*HOST, "noop_round_trip_us", "median"),
    "host_busy_extra_us": section(*HOST, "busy_round_trip_extra_us", "median"),
    "host_call_us": section(*HOST, "host_us", "median"),
    "inprocess_call_us": section(*HOST, "inprocess_us", "median"),
    "host_added_us": section(*HOST, "added_us"),
    "host_vs_raw_us": section(*HOST, "added_vs_raw_server_us"),
    "host_64mb_gbs": section("host", "throughput", "64MB", "MB_per_s", scale=1e-3, fmt="{:.1f}"),
    "host_64mb_ms": section("host", "throughput", "64MB", "seconds", "median", scale=1e3),
    # Celery (benchmarks/celery_pools.py).
    "celery_prefork_ratio": section(
        "celery", "celery", "prefork + forksafe", "ratio_to_threads_workaround", fmt="{:.2f}"
    ),
    "celery_threads_proxy_ratio": section(
        "celery", "celery", "threads + forksafe", "ratio_to_threads_workaround", fmt="{:.2f}"
    ),
    "celery_task_ms": section("celery", "celery", "solo", "latency_ms", "p50", fmt="{:.1f}"),
    # A pool whose master ran TensorFlow (benchmarks/pool_memory.py).
    "pool_model_mb": section("pool_memory", "pool_memory", "model_mb"),
    "pool_untouched_mb": section("pool_memory", "pool_memory", "untouched", "pss_total_mb"),
    "pool_poisoned_mb": section("pool_memory", "pool_memory", "poisoned", "pss_total_mb"),
    "pool_ratio": section("pool_memory", "pool_memory", "ratio", fmt="{:.3f}"),
    "pool_host_mb": _host_pss,
    # One model for many workers (benchmarks/shared.py, shared_knobs.py).
    "shared_model_mb": section(*SHARED, "model_mb"),
    "shared_workers": section(*SHARED, "workers"),
    "shared_pss_ratio_celery": section(
        *SHARED, "celery", "shared, batching", "pss_total_mb_ratio", fmt="{:.2f}"
    ),
    "shared_pss_ratio_gunicorn": section(
        *SHARED, "gunicorn", "shared, batching", "pss_total_mb_ratio", fmt="{:.2f}"
    ),
    "shared_rps_ratio_celery": section(
        *SHARED, "celery", "shared, batching", "requests_per_s_ratio", fmt="{:.2f}"
    ),
    "shared_rps_ratio_gunicorn": section(
        *SHARED, "gunicorn", "shared, batching", "requests_per_s_ratio", fmt="{:.2f}"
    ),
    "shared_host_pss_mb": section(
        *SHARED, "gunicorn", "shared, batching", "pss_by_role_mb", "host"
    ),
    "inprocess_worker_pss_mb": _per_worker("gunicorn", "in-process"),
    "shared_worker_pss_mb": _per_worker("gunicorn", "shared, batching"),
    "knobs_rps_wait5": section(*KNOBS, "64:5@4", "requests_per_s", "median"),
    "knobs_rps_wait2": section(*KNOBS, "64:2@4", "requests_per_s", "median"),
    "knobs_rps_wait0": section(*KNOBS, "64:0@4", "requests_per_s", "median"),
    "knobs_rps_nobatch": section(*KNOBS, "1:0@4", "requests_per_s", "median"),
    "knobs_alone_wait5_ms": section(*KNOBS, "64:5@4", "alone_p50_ms", "median", fmt="{:.1f}"),
    "knobs_alone_wait0_ms": section(*KNOBS, "64:0@4", "alone_p50_ms", "median", fmt="{:.1f}"),
    # Keras on JAX from threads (benchmarks/jax_threads.py).
    "jax_bare_answered_8": section(
        "jax", "threads", "8", "bare_answered_share", "median", scale=100
    ),
    # torch (benchmarks/torch_fork.py).
    "torch_hooks_none_us": section("torch_fork", "hooks_us", "no_framework"),
    "torch_hooks_imported_us": section("torch_fork", "hooks_us", "imported"),
    "torch_hooks_pool_us": section("torch_fork", "hooks_us", "pool_started"),
    "torch_load_start": section("torch_fork", "loadavg_1min_start", fmt="{:.1f}"),
    "torch_load_end": section("torch_fork", "loadavg_1min_end", fmt="{:.1f}"),
    # Servers and queues (benchmarks/servers.py).
    "rq_jobs": section("servers", "rq", "jobs"),
    "rq_shared_to_simple": section("servers", "rq", "ratio_shared_to_simple", fmt="{:.2f}"),
    "rq_default_per_job_s": section("servers", "rq", "default", "per_job_s", fmt="{:.1f}"),
    "rq_shared_per_job_s": section("servers", "rq", "shared", "per_job_s", fmt="{:.2f}"),
    "rq_simple_per_job_s": section("servers", "rq", "SimpleWorker", "per_job_s", fmt="{:.2f}"),
    "rq_held_per_job_s": section(
        "servers", "rq", "shared, worker holds the host", "per_job_s", fmt="{:.2f}"
    ),
    "rq_horse_only_ms": section("servers", "rq", "horse only, no model", "per_job_s", scale=1000),
    "servers_requests": section("servers", "uwsgi", "default", "requests"),
    "servers_recycle_after": section("servers", "recycle_after"),
}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def shared_pools(results: Results) -> str:
    """Memory and speed of each pool, in-process and shared (benchmarks/shared.py)."""
    shared = _at(results, ("sections", *SHARED))
    labels = {"celery": "Celery prefork -c {n}", "gunicorn": "gunicorn -w {n}"}
    names = {
        "in-process": "each worker loads",
        "shared, batching": "shared, batching",
        "shared, max_batch=1": "shared, `max_batch=1`",
    }
    lines = [
        "| pool | configuration | total PSS MB | requests/s | p50 / p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kind, label in labels.items():
        for config, row in shared[kind].items():
            base = config == "in-process"
            pss = f"{row['pss_total_mb']:.0f}" + (
                "" if base else f" ({row['pss_total_mb_ratio']:.2f}x)"
            )
            rps = f"{row['requests_per_s']['median']:.1f}" + (
                "" if base else f" ({row['requests_per_s_ratio']:.2f}x)"
            )
            latency = f"{row['p50_ms']['median']:.0f} / {row['p99_ms']['median']:.0f}"
            pool = label.format(n=shared["workers"])
            lines.append(_row([pool, names[config], pss, rps, latency]))
    return "\n".join(lines)


def _engine(engine: str) -> Callable[[Results], str]:
    """One engine's rows of benchmarks/engines.py, the driver's load said where it happens."""

    def table(results: Results) -> str:
        rows = _at(results, ("sections", "engines", "engines", engine))
        lines = [
            "| way | loads per worker | loads outside the workers | bytes per task "
            "| seconds | seconds / forksafe |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        base = rows["forksafe"]["seconds"]
        for way, row in rows.items():
            spread = row["loads_per_worker"]
            loads = f"{spread['min']}" + (
                "" if spread["min"] == spread["max"] else f"-{spread['max']}"
            )
            outside = f"{row['loads_outside_workers']}"
            if way == "naive":  # the driver loads before anything is counted, to ship it
                outside += " counted, + 1 in the driver (to ship it)"
            lines.append(
                _row(
                    [
                        way,
                        f"{loads} ({row['loads']} in {row['workers']} workers)",
                        outside,
                        f"{row['task_bytes']:,}",
                        f"{row['seconds']:.1f}",
                        f"{row['seconds'] / base:.2f}",
                    ]
                )
            )
        return "\n".join(lines)

    return table


def _seconds(ms: float | None) -> str:
    return "-" if ms is None else f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"


# benchmarks/servers.py: (key, label) rows of each server's table.
_SERVER_ROWS = {
    "uwsgi": (
        ("naive", "naive: bare model at import (killed by `harakiri`)"),
        ("default", "`forksafe.load_model(path)`"),
        ("shared", '`isolation="shared"`'),
        ("lazy-apps", "`lazy-apps`, bare model"),
    ),
    "fastapi": (
        ("naive", "naive: bare model at import (client gave up)"),
        ("default", "`forksafe.load_model(path)`"),
        ("shared", '`isolation="shared"`'),
        ("--preload off", "`--preload` off, bare model"),
    ),
    "recycling": (
        ("default", "`forksafe.load_model(path)`"),
        ("shared", '`isolation="shared"`'),
        ("--preload off", "`--preload` off, bare model"),
    ),
}


def _server(kind: str) -> Callable[[Results], str]:
    """One HTTP server's rows of benchmarks/servers.py: answers, loads, first and later requests."""

    def table(results: Results) -> str:
        runs = _at(results, ("sections", "servers", kind))
        lines = [
            "| | answered | workers (loads each) | a worker's first request: median, max "
            "| later requests: median, slowest |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, label in _SERVER_ROWS[kind]:
            row = runs[key]
            answered = f"{row['answered']}/{row['requests']}"
            if not row["answered"]:
                lines.append(_row([label, answered, "-", "-", "-"]))
                continue
            first = row["first_load_ms"]
            cells = [
                f"{row['processes']} ({row['loads_per_process']})",
                f"{_seconds(first['median'])}, {_seconds(first['max'])}",
                f"{_seconds(row['p50_ms'])}, {_seconds(row['slowest_other_ms'])}",
            ]
            lines.append(_row([label, answered, *cells]))
        return "\n".join(lines)

    return table


def servers_rq(results: Results) -> str:
    """RQ's rows of benchmarks/servers.py: wall time per job, horses, loads."""
    rq = _at(results, ("sections", "servers", "rq"))
    labels = (
        ("naive", "naive: bare model preloaded (killed at `job_timeout`)", "-"),
        ("default", "`forksafe.load_model(path)`", "1 per horse"),
        ("shared", '`isolation="shared"`', "1, in the host"),
        (
            "shared, worker holds the host",
            '`isolation="shared"`, the worker holds the host',
            "1, in the host, before the jobs",
        ),
        ("SimpleWorker", "`SimpleWorker` (no fork)", "1, in the worker"),
        ("horse only, no model", "a job that does not use the model", "-"),
    )
    lines = [
        "| | answered | per job | horses | model loads |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label, loads in labels:
        row = rq[key]
        per = "-" if row.get("per_job_s") is None else f"{row['per_job_s']:.2f} s"
        horses = str(row["processes"]) if row["processes"] and key != "SimpleWorker" else "-"
        lines.append(_row([label, f"{row['answered']}/{row['jobs']}", per, horses, loads]))
    return "\n".join(lines)


def from_results(heading: str) -> Callable[[Results], str]:
    """The first table under the RESULTS.md heading that starts with ``heading``, as is."""

    def table(_: Results) -> str:
        text = RESULTS.with_name("RESULTS.md").read_text(encoding="utf-8")
        lines = text.split("\n## " + heading, 1)[1].split("\n## ", 1)[0].splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("|"))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), None)
        return "\n".join(lines[start:end])

    return table


TABLES: dict[str, Callable[[Results], str]] = {
    "shared_pools": shared_pools,
    "engines_dask": _engine("dask"),
    "engines_ray": _engine("ray"),
    "engines_spark": _engine("spark"),
    "torch_ways": from_results("A torch child of a parent whose thread pool started"),
    "separate_server": from_results("A shared host beside a separate model server"),
    "servers_rq": servers_rq,
    "servers_uwsgi": _server("uwsgi"),
    "servers_fastapi": _server("fastapi"),
    "servers_recycling": _server("recycling"),
}


@cache
def results() -> Results:
    """The committed results."""
    with RESULTS.open(encoding="utf-8") as f:
        loaded: Results = json.load(f)
    return loaded


def render(markdown: str, where: str = "the page") -> str:
    """Replace every placeholder in ``markdown``; an unknown name is a ValueError."""

    def expand(match: re.Match[str]) -> str:
        table = TABLES if match["kind"] == "table" else FIGURES
        name = match["name"]
        if name not in table:
            raise ValueError(
                f"{where}: no {match['kind']} named {name!r} in docs/_hooks/figures.py"
            )
        return table[name](results())

    return PLACEHOLDER.sub(expand, markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Render the page's figures and tables from the committed results."""
    return render(markdown, page.file.src_path)
