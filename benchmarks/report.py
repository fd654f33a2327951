"""Turn the sections' JSON into the machine record, the targets, plots and RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

PACKAGES = (
    "forksafe",
    "tensorflow",
    "keras",
    "tf-keras",
    "jax",
    "numpy",
    "wrapt",
    "celery",
    "redis",
    "dask",
    "distributed",
    "ray",
    "pyspark",
)


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem_gib = int(f.readline().split()[1]) / 2**20
    except OSError:
        mem_gib = 0.0
    return {
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions() -> dict[str, str]:
    """Installed versions of what the figures depend on (Redis server included)."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    try:
        out = subprocess.run(
            ["redis-cli", "INFO", "server"], capture_output=True, text=True, timeout=5
        ).stdout
        found["redis-server"] = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "redis_version" in line),
            "unknown",
        )
    except (OSError, subprocess.SubprocessError):
        found["redis-server"] = "unknown"
    return found


def _target(
    name: str,
    value: float | None,
    limit: float,
    unit: str,
    *,
    most: bool,
    interval: tuple[float, float] | None = None,
) -> dict[str, Any]:
    met = value is not None and (value <= limit if most else value >= limit)
    shown = "not measured" if value is None else f"{value:.4g}{unit}"
    if value is not None and interval is not None:
        shown += f" (95 % interval {interval[0]:.3f}-{interval[1]:.3f})"
    sign = "≤" if most else "≥"
    return {"target": f"{name} {sign} {limit:g}{unit}", "value": shown, "met": met}


def targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was met."""
    rows = []
    core = sections.get("core", {})
    for model in ("dense", "cnn"):
        for call in ("predict_on_batch", "__call__"):
            row = core.get(f"overhead_{model}", {}).get(call)
            rows.append(
                _target(
                    f"{model} {call} proxy/bare",
                    row and row["ratio"],
                    1.02,
                    "",
                    most=True,
                    interval=row and row["ratio_ci95"],
                )
            )
    cold = core.get("cold_start")
    rows.append(
        _target("child cold start proxy/hand-written", cold and cold["ratio"], 1.05, "", most=True)
    )
    host = sections.get("host", {})
    start = host.get("start")
    rows.append(
        _target(
            "later host start (model load included)",
            start and start["later_host_with_load_s"]["median"],
            0.3,
            " s",
            most=True,
        )
    )
    call = host.get("per_call")
    rows.append(
        _target("host added latency, small call", call and call["added_us"], 150, " µs", most=True)
    )
    big = host.get("throughput", {}).get("64MB")
    rows.append(
        _target("host 64 MB round trip", big and big["MB_per_s"] / 1000, 1.0, " GB/s", most=False)
    )
    celery = sections.get("celery", {}).get("celery", {})
    prefork = celery.get("prefork + forksafe")
    rows.append(
        _target(
            "Celery prefork + forksafe / threads workaround, tasks/s",
            prefork and prefork["ratio_to_threads_workaround"],
            1.5,
            "",
            most=False,
            interval=prefork and prefork["ratio_ci95"],
        )
    )
    memory = sections.get("pool_memory", {}).get("pool_memory", {})
    rows.append(
        _target(
            "Celery prefork -c 4, master ran TF: templates",
            memory.get("templates"),
            1,
            "",
            most=True,
        )
    )
    rows.append(
        _target(
            "same pool: total PSS / untouched-master pool",
            memory.get("ratio"),
            1.15,
            "",
            most=True,
        )
    )
    shared = sections.get("shared", {}).get("shared", {})
    workers = shared.get("workers", 4)
    for kind, label in (
        ("celery", f"Celery prefork -c {workers}"),
        ("gunicorn", f"gunicorn -w {workers} sync"),
    ):
        row = shared.get(kind, {}).get("shared, batching", {})
        rows.append(
            _target(
                f"{label}: total PSS, shared host with batching / in-process",
                row.get("pss_total_mb_ratio"),
                0.6,
                "",
                most=True,
            )
        )
        rows.append(
            _target(
                f"{label}: requests/s, shared host with batching / in-process",
                row.get("requests_per_s_ratio"),
                0.9,
                "",
                most=False,
            )
        )
    from benchmarks.servers import targets as servers_targets

    rows += servers_targets(sections.get("servers"))
    jax = sections.get("jax", {}).get("threads", {}).get("8")
    rows.append(
        _target(
            "Keras on JAX, 8 threads on one proxy: share of calls answered",
            jax and jax["proxy_answered_share"]["min"],
            1.0,
            "",
            most=False,
        )
    )
    return rows


def plots(sections: dict[str, Any], out: str) -> list[tuple[str, str]]:
    """Write PNG plots into ``out``; return (title, file name) pairs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    celery = sections.get("celery", {}).get("celery", {})
    if celery and "skipped" not in celery:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        names = list(celery)
        left.boxplot(
            [celery[n]["latencies_ms"] for n in names], vert=False, whis=(1, 99), showfliers=False
        )
        left.set_yticks(range(1, len(names) + 1), names)
        left.set_xlabel("send → finish, ms (whiskers p1-p99)")
        left.set_title("Celery task latency, one task in flight per slot")
        right.barh(names, [celery[n]["tasks_per_s"]["median"] for n in names])
        right.set_yticks(range(len(names)), [""] * len(names))
        right.set_xlabel("tasks/s (median of bursts)")
        right.set_title("Celery throughput, Redis broker")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "celery.png"), dpi=90)
        plt.close(fig)
        written.append(("Celery: latency and throughput by pool", "celery.png"))
    threads = sections.get("scaling", {}).get("threads")
    if threads:
        fig, ax = plt.subplots(figsize=(6, 4))
        counts = [int(n) for n in threads]
        for key, label in (("bare_calls_per_s", "bare model"), ("proxy_calls_per_s", "proxy")):
            ax.plot(
                counts, [threads[str(n)][key]["median"] for n in counts], marker="o", label=label
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xlabel("threads calling one model")
        ax.set_ylabel("predict_on_batch calls/s")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.set_title("Threads sharing one proxy")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "threads.png"), dpi=90)
        plt.close(fig)
        written.append(("Threads sharing one proxy", "threads.png"))
    return written


def _mmm(s: dict[str, float], scale: float = 1.0, fmt: str = ".1f") -> str:
    return f"{s['median'] * scale:{fmt}} ({s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}})"


def _overhead_rows(rows: dict[str, Any], label: str) -> list[str]:
    lines = []
    for call, row in rows.items():
        lines.append(
            f"| {label} | `{call}` | {_mmm(row['bare_us'], fmt='.2f')} | "
            f"{_mmm(row['proxy_us'], fmt='.2f')} | {row['ratio']:.3f} "
            f"({row['ratio_ci95'][0]:.3f}-{row['ratio_ci95'][1]:.3f}) | "
            f"{row['added_ns'] / 1000:+.2f} µs |"
        )
    return lines


def _machine(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, {m['platform']}, "
        f"Python {m['python']}"
    )


def _machines(latest: dict[str, Any], sections: dict[str, Any]) -> str:
    """One machine, or (after ``--merge``) each machine with the sections measured on it."""
    by_machine: dict[str, list[str]] = {}
    for name, section in sections.items():
        by_machine.setdefault(_machine(section.get("machine", latest)), []).append(name)
    if len(by_machine) <= 1:
        return f"Machine: {_machine(latest)}.  "
    return (
        "Machines (sections merged from separate runs; compare figures within a table only): "
        + "; ".join(f"{machine} ({', '.join(names)})" for machine, names in by_machine.items())
        + ".  "
    )


def _ratios(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _shared(pools: dict[str, Any] | None, knobs: dict[str, Any] | None) -> list[str]:
    """The tables of ``benchmarks/shared.py`` (the pools) and ``shared_knobs.py``."""
    out: list[str] = []
    if pools:
        out += [
            "",
            "## One model for many workers (`benchmarks/shared.py`)",
            "",
            f"Dense 64→{pools['hidden']}→{pools['hidden']}→10, {pools['model_mb']:.0f} MB "
            f"`.keras`, served by "
            f"{pools['workers']} workers: Celery `prefork` on Redis and gunicorn `sync` over HTTP "
            "on 127.0.0.1 (`benchmarks/shared_app.py`: rows → `predict_on_batch` → top 3). "
            '*in-process*: each worker loads the model; *shared*: `isolation="shared"`, one '
            "host for the pool, with the default batching or `max_batch=1`. Memory: total PSS "
            "of all the pool's processes (master, workers, shared host) "
            + (
                f"with the pool alone, after {pools['settle_s']:g} s of load. "
                if pools.get("memory_alone", True)
                else "**after the time phase, with the three pools of a server alive at once "
                "and sharing library pages: not comparable**. "
            )
            + "Time: the three pools of a server alive at once "
            f"and loaded in turn, {pools['rounds']} rounds of {pools['seconds']:g} s slices "
            f"rotating the order; a closed loop of {pools['clients']} requests in flight "
            f"({pools['rows']} rows each; HTTP client threads, or a window of Celery tasks). "
            "Latency: send → answer (Celery: send → the task's finish). Throughput ratio: "
            "median of the per-round ratios to *in-process*. Load average (1 min) "
            f"{pools['loadavg_1min_start']:.1f} at the start, {pools['loadavg_1min_end']:.1f} at "
            f"the end, {pools.get('cpus', '?')} CPUs.",
            "",
            "| server | configuration | processes | total PSS MB | PSS by role MB | PSS ratio "
            "| requests/s | throughput ratio (per round) | p50 ms | p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for kind in ("celery", "gunicorn"):
            for name, row in pools.get(kind, {}).items():
                kinds = ", ".join(f"{n} {k}" for k, n in sorted(row["processes"].items()))
                roles = ", ".join(f"{k} {v:.0f}" for k, v in row["pss_by_role_mb"].items())
                out.append(
                    f"| {kind} | {name} | {kinds} | {row['pss_total_mb']:.0f} | {roles} | "
                    f"{row['pss_total_mb_ratio']:.2f} | {_mmm(row['requests_per_s'])} | "
                    f"{row['requests_per_s_ratio']:.2f} ({_ratios(row['requests_per_s_ratios'])}) "
                    f"| {_mmm(row['p50_ms'])} | {_mmm(row['p99_ms'])} |"
                )
    if knobs:
        out += [
            "",
            "## Shared host batching knobs (`benchmarks/shared_knobs.py`)",
            "",
            f"gunicorn, {knobs['workers']} sync workers, one shared host per configuration; the "
            "configurations with the same rows per request run at once and are loaded in turn, "
            f"{knobs['rounds']} rounds rotating the order. Under load: {knobs['clients']} requests "
            f"in flight, {knobs['seconds']:g} s counted; alone: one request at a time, "
            f"{knobs['alone_seconds']:g} s. At most {knobs['workers']} x (rows per request) rows "
            "can wait at once: a `max_batch` above that cannot change anything. Load average "
            f"(1 min) {knobs['loadavg_1min_start']:.1f} at the start, "
            f"{knobs['loadavg_1min_end']:.1f} at the end.",
            "",
            "| rows per request | max_batch | max_wait_ms | requests/s | p50 ms | p99 ms "
            "| alone: p50 ms | alone: p99 ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for row in knobs["grid"].values():
            out.append(
                f"| {row['rows']} | {row['max_batch']} | {row['max_wait_ms']:g} | "
                f"{_mmm(row['requests_per_s'])} | {_mmm(row['p50_ms'])} | {_mmm(row['p99_ms'])} "
                f"| {_mmm(row['alone_p50_ms'])} | {_mmm(row['alone_p99_ms'])} |"
            )
    return out


def markdown(results: dict[str, Any], plots: list[tuple[str, str]]) -> str:
    """RESULTS.md: machine, targets, then every section's table."""
    m, v, s = results["machine"], results["versions"], results["sections"]
    out = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks` (`nox -s bench`)"
        + (" in **quick** mode (smoke counts: not results)" if results["quick"] else "")
        + f"; the whole run took {results['wall_s'] / 60:.1f} min. Every figure is measured"
        " against its baseline in the same run; cells read *median (min-max)* over rounds.",
        "",
        _machines(m, s),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "| --- | --- | --- |",
    ]
    out += [
        f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |"
        for t in results["targets"]
    ]
    core = s.get("core")
    if core:
        out += [
            "",
            "## Proxy overhead per call (`benchmarks/core.py`, `benchmarks/graph.py`)",
            "",
            "Dense 4→8→3 and MobileNetV2 (96x96x3, `weights=None`), batch 8; TF1 graph mode is a",
            "`tf_keras` Dense 4→8→3 with eager execution disabled, its bare baseline called from",
            "the thread whose default graph holds it (no re-entry), and a hand-written",
            "`with graph.as_default(), session.as_default():` as the threads workaround does.",
            "The ratio is the median of per-round proxy/bare ratios (rounds alternate which",
            "goes first), with a bootstrap 95 % interval; the *bare vs bare* rows time the bare",
            "model against itself: how far they land from 1 is this run's noise.",
            "",
            "| model | call | bare µs | proxy µs | ratio (95 % interval) | added |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        out += _overhead_rows(core["overhead_dense"], "Dense")
        out += _overhead_rows(core["overhead_cnn"], "MobileNetV2")
        if "graph" in s:
            out += _overhead_rows(s["graph"]["graph_mode"], "TF1 graph")
        cold = core["cold_start"]
        out += [
            "",
            "## Child cold start (`benchmarks/core.py`)",
            "",
            "Fork → first prediction in the child; the parent imported Keras but never ran it. "
            f"{cold.get('forks', '?')} forks of each, in adjacent pairs; the ratio is the "
            "median of the per-pair ratios.",
            "",
            "| proxy ms | hand-written post-fork `load_model` ms | ratio |",
            "| --- | --- | --- |",
            f"| {_mmm(cold['seconds']['proxy'], 1e3)} | "
            f"{_mmm(cold['seconds']['hand_written'], 1e3)} | {cold['ratio']:.3f} |",
        ]
    host = s.get("host")
    if host:
        st, pc = host["start"], host["per_call"]
        out += [
            "",
            "## Out-of-process host (`benchmarks/host.py`)",
            "",
            "| figure | value | baseline in the same run |",
            "| --- | --- | --- |",
            f"| first host (template start, Keras import, load) | "
            f"{st['first_host_with_template_s']:.2f} s | spawned process importing Keras: "
            f"{_mmm(st['spawn_import_keras_s'], fmt='.2f')} s |",
            f"| later host, model load included | {_mmm(st['later_host_with_load_s'], fmt='.3f')} s"
            f" | ratio to spawn {st['ratio_later_host_vs_spawn']:.3f} |",
            f"| later host, no model | {_mmm(st['later_host_without_model_s'], 1e3)} ms | |",
            f"| no-op method round trip | {_mmm(pc['noop_round_trip_us'])} µs | |",
            f"| same round trip while the host spins {pc['busy_for_s'] * 1e6:.0f} µs (as long "
            f"as the call below), beyond that time | {_mmm(pc['busy_round_trip_extra_us'])} µs "
            "| no-op round trip above |",
            f"| `predict_on_batch` (Dense, batch 8) | {_mmm(pc['host_us'])} µs | in-process "
            f"{_mmm(pc['inprocess_us'])} µs: {pc['added_us']:+.0f} µs |",
            f"| same, in-process right after an idle wait (as a host always is) | "
            f"{_mmm(pc['inprocess_after_wait_us'])} µs | tight loop above |",
            f"| same, through a hand-written spawned server on a `multiprocessing` pipe | "
            f"{_mmm(pc['raw_server_us'])} µs | the host adds {pc['added_vs_raw_server_us']:+.0f} µs"
            " to it |",
        ]
        for size, row in host["throughput"].items():
            out.append(
                f"| {size} array round trip | {_mmm(row['seconds'], 1e3)} ms, "
                f"{row['MB_per_s']:.0f} MB/s | |"
            )
        out += ["", "MB/s counts bytes sent plus bytes received."]
    celery = s.get("celery", {}).get("celery")
    if celery:
        out += ["", "## Celery on Redis (`benchmarks/celery_pools.py`)", ""]
        if "skipped" in celery:
            out.append(f"Skipped: {celery['skipped']}.")
        else:
            out += [
                "Mixed task (`benchmarks/celery_app.py`): 64 signals of 1024 samples → numpy FFT",
                "and Python-level feature code → `predict_on_batch` (Dense 64→256→256→10) →",
                "softmax and top-3 as plain Python. Worker slots: 2 (`solo`: 1).",
                "",
                "Ratios are the median of per-round ratios, with a bootstrap 95 % interval.",
                "",
                "| worker | tasks/s | ratio to threads workaround | p50 ms | p99 ms "
                "| RSS per process MB |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for name, row in celery.items():
                rss = " + ".join(f"{mb:.0f}" for mb in row["rss_mb"].values())
                out.append(
                    f"| {name} | {_mmm(row['tasks_per_s'])} | "
                    f"{row['ratio_to_threads_workaround']:.2f} ({row['ratio_ci95'][0]:.2f}-"
                    f"{row['ratio_ci95'][1]:.2f}) | {row['latency_ms']['p50']:.1f} | "
                    f"{row['latency_ms']['p99']:.1f} | {rss} |"
                )
    memory = s.get("pool_memory", {}).get("pool_memory")
    if memory:
        out += ["", "## Memory of a pool whose master ran TensorFlow (`benchmarks/pool_memory.py`)"]
        if "skipped" in memory:
            out += ["", f"Skipped: {memory['skipped']}."]
        else:
            out += [
                "",
                f"Celery `prefork -c {memory['children']}` on Redis, a Dense model of "
                f"{memory['model_mb']:.0f} MB, every child answered; total PSS (shared pages "
                "split among the processes that map them) of the master, its children and, "
                "with a poisoned master, the template and the hosts.",
                "",
                "| master | processes | total PSS MB |",
                "| --- | --- | --- |",
            ]
            for key, label in (("untouched", "untouched"), ("poisoned", "ran a TF op at import")):
                row = memory[key]
                kinds = ", ".join(f"{n} {k}" for k, n in row["processes"].items())
                out.append(f"| {label} | {kinds} | {row['pss_total_mb']:.0f} |")
            out += ["", f"Ratio poisoned / untouched: {memory['ratio']:.3f}."]
    out += _shared(s.get("shared", {}).get("shared"), s.get("shared_knobs", {}).get("shared_knobs"))
    sc = s.get("scaling")
    if sc:
        out += [
            "",
            "## Scaling (`benchmarks/scaling.py`)",
            "",
            "| live proxies | method call, bare ns | through a proxy ns | added ns |",
            "| --- | --- | --- | --- |",
        ]
        for count, row in sc["per_call_by_live_proxies"].items():
            out.append(
                f"| {count} | {row['bare_us']['median'] * 1e3:.0f} | "
                f"{row['proxy_us']['median'] * 1e3:.0f} | {row['added_ns']:.0f} |"
            )
        out += [
            "",
            "| live proxies | parent hooks µs | child hook µs | fork → child running µs |",
            "| --- | --- | --- | --- |",
        ]
        for count, row in sc["fork_hooks"].items():
            out.append(
                f"| {count} | {_mmm(row['parent_hooks_us'])} | {_mmm(row['child_hook_us'])} | "
                f"{_mmm(row['fork_to_child_running_us'], fmt='.0f')} |"
            )
        out += [
            "",
            "| threads on one model | bare calls/s | proxy calls/s | ratio |",
            "| --- | --- | --- | --- |",
        ]
        for threads, row in sc["threads"].items():
            out.append(
                f"| {threads} | {_mmm(row['bare_calls_per_s'], fmt='.0f')} | "
                f"{_mmm(row['proxy_calls_per_s'], fmt='.0f')} | {row['ratio']:.3f} |"
            )
    jax = s.get("jax")
    if jax:
        out += [
            "",
            "## Keras on JAX from threads (`benchmarks/jax_threads.py`)",
            "",
            "One Keras-JAX Dense 4→8→3 model, `predict_on_batch` on batch 8, N threads released",
            "together, each making the same number of calls. The bare model fails most calls",
            "once threads overlap (`Array has been deleted`: each call donates the variables'",
            "buffers); the proxy serializes calls for this backend. *Answered* counts correct",
            "answers; calls/s counts answered calls only.",
            "",
            "| threads | calls | bare answered | proxy answered | bare answered/s "
            "| proxy answered/s | ratio |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for threads, row in jax["threads"].items():
            out.append(
                f"| {threads} | {row['calls']} | "
                f"{_mmm(row['bare_answered_share'], 100, '.0f')} % | "
                f"{_mmm(row['proxy_answered_share'], 100, '.0f')} % | "
                f"{_mmm(row['bare_answered_per_s'], fmt='.0f')} | "
                f"{_mmm(row['proxy_answered_per_s'], fmt='.0f')} | {row['ratio']:.2f} |"
            )
    if s.get("engines"):
        from benchmarks.engines import markdown as engines_markdown

        out += engines_markdown(s["engines"])
    if s.get("servers"):
        from benchmarks.servers import markdown as servers_markdown

        out += servers_markdown(s["servers"])
    for title, name in plots:
        out += ["", f"## {title}", "", f"![{title}]({name})"]
    return "\n".join(out) + "\n"
