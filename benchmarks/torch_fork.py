"""A torch fork child of a parent whose CPU thread pool had started: the two ways out, measured.

    python -m benchmarks.torch_fork [--calls 50] [--json FILE]

The parent runs one large torch operation (which starts torch's OpenMP pool)
and forks. Each child then runs the same models three ways: in-process in a
child of an *untouched* parent (the reference: full thread pool), in-process
in the poisoned child with ``torch.set_num_threads(1)`` (the only in-process
way that does not hang), and through a forksafe host (``isolation="process"``).
Reports medians of per-call seconds, the host's first call (start and load),
the host's resident memory, and what forksafe's fork hooks (which probe for
torch's pool) cost in a process that imported torch, before and after its pool
started. docs/guides/jax-torch.md shows these figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import numpy as np

import forksafe
from benchmarks._render import emit
from forksafe import _forking
from forksafe.testing import run_in_fork


def build(width: int) -> Any:
    """A seeded MLP: 64 -> width -> width -> 10."""
    import torch

    torch.manual_seed(0)
    layers = [torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width)]
    return torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(width, 10)).eval()


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """One forward pass without autograd, as numpy."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


def timed(fn: Any, calls: int) -> float:
    """Median seconds of ``calls`` calls of ``fn`` after one warm-up call."""
    fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


CASES = {"small": (64, 8), "large": (2048, 512)}  # name: (width, batch)


def in_process(calls: int, one_thread: bool) -> dict[str, float]:
    """Per-call seconds of bare models in this process."""
    import torch

    if one_thread:
        torch.set_num_threads(1)
    out = {}
    for name, (width, batch) in CASES.items():
        model = build(width)
        x = np.random.default_rng(1).standard_normal((batch, 64)).astype("float32")
        out[name] = timed(lambda model=model, x=x: predict(model, x), calls)
    return out


def hosted(calls: int) -> dict[str, float]:
    """Per-call seconds through hosts, the first call of each, and the hosts' memory."""
    out: dict[str, float] = {}
    for name, (width, batch) in CASES.items():
        # By module name: a host cannot import ``__main__``'s functions.
        from benchmarks.torch_fork import build as importable

        proxy = forksafe.lazy_model(importable, width, isolation="process")
        x = np.random.default_rng(1).standard_normal((batch, 64)).astype("float32")
        start = time.perf_counter()
        proxy(_tensor(x))  # the first call: start a host, import torch, build, answer
        out[f"{name}_first"] = time.perf_counter() - start
        # The host runs the model; the numpy conversion happens there, once per call.
        out[name] = timed(lambda proxy=proxy, x=x: proxy(_tensor(x)), calls)
        pid = forksafe.info(proxy).host_pid
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            rss = next(line for line in f if line.startswith("VmRSS"))
        out[f"{name}_host_rss_mb"] = int(rss.split()[1]) / 1024
    return out


def _tensor(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(x)


def hooks_us(forks: int) -> float:
    """Median µs of forksafe's parent-side fork hooks (every runtime probe) in this process."""
    samples = []
    for _ in range(forks):
        start = time.perf_counter()
        _forking._before()
        _forking._after_in_parent()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def render(data: dict[str, Any]) -> list[str]:
    """The three ways' per-call time, first call and memory, and the hooks, for RESULTS.md."""
    u, one, host = data["untouched"], data["poisoned_one_thread"], data["poisoned_host"]
    hooks = data["hooks_us"]
    return [
        "## A torch child of a parent whose thread pool started (`benchmarks/torch_fork.py`)",
        "",
        f"torch {data['torch']} on {data['cpus']} CPUs; MLP 64→64→64→10 on 8 rows (small) "
        "and 64→2048→2048→10 on 512 rows (large); medians of "
        f"{data.get('calls', 50)} calls. The poisoned parent ran one 1000x1000 matmul "
        "(which starts torch's OpenMP pool) before forking."
        + (
            f" Load average (1 min) {data['loadavg_1min_start']:.1f} at the start, "
            f"{data['loadavg_1min_end']:.1f} at the end: a two-thread pool slows down when "
            "other work takes a core."
            if "loadavg_1min_start" in data
            else ""
        ),
        "",
        "| per call | child of an untouched parent | poisoned child, one thread "
        "| poisoned child, host |",
        "| --- | --- | --- | --- |",
        f"| small model, 8 rows | {u['small'] * 1e6:.0f} µs | {one['small'] * 1e6:.0f} µs "
        f"| {host['small'] * 1e6:.0f} µs |",
        f"| large model, 512 rows | {u['large'] * 1e3:.1f} ms | {one['large'] * 1e3:.1f} ms "
        f"| {host['large'] * 1e3:.1f} ms |",
        f"| first call | (the load) | (the load) | {host['small_first']:.2f} s (start a host, "
        "import torch, build, answer) |",
        f"| host memory (RSS) | | | {host['small_host_rss_mb']:.0f} MB (small), "
        f"{host['large_host_rss_mb']:.0f} MB (large) |",
        "",
        "forksafe's parent-side fork hooks (every runtime probe), median of 200: "
        f"{hooks['no_framework']:.0f} µs before torch is imported, {hooks['imported']:.0f} µs "
        f"with torch imported, {hooks['pool_started']:.0f} µs once its pool started.",
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure the three ways and the hooks; print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    no_framework = hooks_us(200)
    import torch

    report: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    report["calls"] = args.calls
    report["loadavg_1min_start"] = round(os.getloadavg()[0], 2)
    report["untouched"] = run_in_fork(in_process, args.calls, False, timeout=300)
    hooks = {"no_framework": no_framework, "imported": hooks_us(200)}
    a = torch.randn(1000, 1000)
    _ = a @ a  # starts torch's OpenMP pool in this (the parent) process
    assert forksafe.runtime_state().torch.started
    hooks["pool_started"] = hooks_us(200)
    report["hooks_us"] = hooks
    report["poisoned_one_thread"] = run_in_fork(in_process, args.calls, True, timeout=300)
    report["poisoned_host"] = run_in_fork(hosted, args.calls, timeout=300)
    report["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
