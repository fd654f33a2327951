"""A torch fork child of a parent whose CPU thread pool had started: the two ways out, measured.

    python -m benchmarks.torch_fork [--calls N]

The parent runs one large torch operation (which starts torch's OpenMP pool)
and forks. Each child then runs the same models three ways: in-process in a
child of an *untouched* parent (the reference: full thread pool), in-process
in the poisoned child with ``torch.set_num_threads(1)`` (the only in-process
way that does not hang), and through a forksafe host (``isolation="process"``).
Prints medians of per-call seconds, the host's first call (start and load) and
the host's resident memory. Not part of ``python -m benchmarks``: it answers
one design question (issue 15), and its numbers are quoted in
docs/guides/jax-torch.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np

import forksafe
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
        proxy.eval()
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


def main() -> None:
    """Measure, print a JSON report."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50)
    calls = parser.parse_args().calls
    import torch

    report: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    report["untouched"] = run_in_fork(in_process, calls, False, timeout=300)
    a = torch.randn(1000, 1000)
    _ = a @ a  # starts torch's OpenMP pool in this (the parent) process
    assert forksafe.runtime_state().torch.started
    report["poisoned_one_thread"] = run_in_fork(in_process, calls, True, timeout=300)
    report["poisoned_host"] = run_in_fork(hosted, calls, timeout=300)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
