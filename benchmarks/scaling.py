"""How costs scale: proxies alive, fork hooks, threads sharing one proxy.

- per call: a method call through one proxy while 1, 10 or 100 proxies are
  alive and loaded, against the same call on the bare object;
- fork hooks: the time forksafe's at-fork hooks take with 0, 1, 10, 100
  live proxies (parent side timed directly; child side timed by running the
  child hook again in a fork child), and fork → child running end to end;
- threads: ``predict_on_batch`` calls per second from 1, 2, 4, 8 threads on
  one proxy, against the same threads on the bare model.

    python -m benchmarks.scaling [--rounds 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import threading
import time
from typing import Any

import numpy as np

import forksafe
from benchmarks._common import Echo, build_model, compare, summary
from benchmarks._render import emit, mmm, pyplot
from forksafe import _forking

COUNTS = (1, 10, 100)
THREADS = (1, 2, 4, 8)


def _compare_calls(proxy: Any, rounds: int, calls: int) -> dict[str, Any]:
    bare = proxy.__wrapped__
    # The attribute lookup is part of every call: look it up each time.
    return compare(lambda: bare.noop(), lambda: proxy.noop(), rounds, calls)


def per_call_by_count(rounds: int, calls: int) -> dict[str, Any]:
    """Added ns of a method call through a proxy, by number of live proxies."""
    results = {}
    for count in COUNTS:
        proxies = [forksafe.lazy_model(Echo) for _ in range(count)]
        for proxy in proxies:
            proxy.noop()
        results[str(count)] = _compare_calls(proxies[0], rounds, calls)
        del proxies
    return results


def _fork_and_time_child_hook() -> tuple[float, float]:
    """Fork; return (fork → child running, the child hook run again) in seconds."""
    read_fd, write_fd = os.pipe()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            running = time.perf_counter() - start
            hook_start = time.perf_counter()
            _forking._after_in_child()
            hook = time.perf_counter() - hook_start
            os.write(write_fd, pickle.dumps((running, hook)))
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as reader:
            data = reader.read()
    finally:
        os.waitpid(pid, 0)
    running, hook = pickle.loads(data)
    return float(running), float(hook)


def fork_hooks(forks: int) -> dict[str, Any]:
    """Hook time and fork latency by number of live, loaded proxies."""
    results = {}
    for count in (0, *COUNTS):
        proxies = [forksafe.lazy_model(Echo) for _ in range(count)]
        for proxy in proxies:
            proxy.noop()
        parent, running, child = [], [], []
        for _ in range(forks):
            start = time.perf_counter()
            _forking._before()
            _forking._after_in_parent()
            parent.append(time.perf_counter() - start)
            run, hook = _fork_and_time_child_hook()
            running.append(run)
            child.append(hook)
        results[str(count)] = {
            "parent_hooks_us": summary([v * 1e6 for v in parent]),
            "child_hook_us": summary([v * 1e6 for v in child]),
            "fork_to_child_running_us": summary([v * 1e6 for v in running]),
        }
        del proxies
    return results


def _calls_per_second(fn: Any, threads: int, calls: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(calls):
            fn()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    return threads * calls / (time.perf_counter() - start)


def threads_on_one_proxy(path: str, rounds: int, calls: int) -> dict[str, Any]:
    """Calls/s of ``predict_on_batch`` from N threads: one proxy vs the bare model."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    proxy = forksafe.load_model(path)
    proxy.predict_on_batch(x)
    bare = proxy.__wrapped__
    results = {}
    for threads in THREADS:
        b, p = [], []
        for _ in range(rounds):
            b.append(_calls_per_second(lambda: bare.predict_on_batch(x), threads, calls))
            p.append(_calls_per_second(lambda: proxy.predict_on_batch(x), threads, calls))
        results[str(threads)] = {
            "bare_calls_per_s": summary(b),
            "proxy_calls_per_s": summary(p),
            "ratio": statistics.median(p) / statistics.median(b),
        }
    return results


def render(data: dict[str, Any]) -> list[str]:
    """Cost per call and per fork by live proxies, and threads on one proxy, for RESULTS.md."""
    out = [
        "## Scaling (`benchmarks/scaling.py`)",
        "",
        "| live proxies | method call, bare ns | through a proxy ns | added ns |",
        "| --- | --- | --- | --- |",
    ]
    for count, row in data["per_call_by_live_proxies"].items():
        out.append(
            f"| {count} | {row['bare_us']['median'] * 1e3:.0f} | "
            f"{row['proxy_us']['median'] * 1e3:.0f} | {row['added_ns']:.0f} |"
        )
    out += [
        "",
        "| live proxies | parent hooks µs | child hook µs | fork → child running µs |",
        "| --- | --- | --- | --- |",
    ]
    for count, row in data["fork_hooks"].items():
        out.append(
            f"| {count} | {mmm(row['parent_hooks_us'])} | {mmm(row['child_hook_us'])} | "
            f"{mmm(row['fork_to_child_running_us'], fmt='.0f')} |"
        )
    out += [
        "",
        "| threads on one model | bare calls/s | proxy calls/s | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for threads, row in data["threads"].items():
        out.append(
            f"| {threads} | {mmm(row['bare_calls_per_s'], fmt='.0f')} | "
            f"{mmm(row['proxy_calls_per_s'], fmt='.0f')} | {row['ratio']:.3f} |"
        )
    return out


def plots(data: dict[str, Any], out: str) -> list[tuple[str, str]]:
    """threads.png: calls/s of threads sharing one model (nothing without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    threads = data["threads"]
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = [int(n) for n in threads]
    for key, label in (("bare_calls_per_s", "bare model"), ("proxy_calls_per_s", "proxy")):
        ax.plot(counts, [threads[str(n)][key]["median"] for n in counts], marker="o", label=label)
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
    return [("Threads sharing one proxy", "threads.png")]


def main(argv: list[str] | None = None) -> int:
    """Run the scaling benchmarks and print them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(directory)
        # Forks first: they need a process that has not started TensorFlow.
        report = {
            "fork_hooks": fork_hooks(forks=max(args.rounds * 3, 10)),
            "per_call_by_live_proxies": per_call_by_count(args.rounds, 20000),
            "threads": threads_on_one_proxy(path, args.rounds, 100),
        }
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
