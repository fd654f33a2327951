"""Memory of a Celery prefork pool whose master ran TensorFlow: one template, hosts.

A real ``celery worker -P prefork -c 4`` on Redis with a ~100 MB model, run
twice, one after the other: with an untouched master (each child loads the
model itself) and with a master that ran a TensorFlow op at import (each
child's model runs in a host process; every host comes from one template).
Once every child has answered, the total PSS (proportional set size: shared
pages split among the processes that map them) of the master, its children,
the template and the hosts, found by an environment marker they all inherit.

    python -m benchmarks.pool_memory [--children 4] [--hidden 5000] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks._common import build_model, marked, stop_session
from benchmarks._render import emit, skipped, target
from benchmarks.celery_pools import REDIS, redis_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TEMPLATE_MARK = b"forksafe._host.host_template import main"


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _role(pid: int, master: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            templated = _TEMPLATE_MARK in f.read()
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            parent_templated = _TEMPLATE_MARK in f.read()
    except OSError:
        return "gone"
    if pid == master:
        return "master"
    if templated:
        return "host" if parent_templated else "template"
    return "child"


@contextlib.contextmanager
def _pool(hold: str, children: int, model: str, queue: str, marker: str, log: str) -> Iterator[int]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "benchmarks.celery_app", "worker",
                "-P", "prefork", "-c", str(children), "-Q", queue, "-n", f"{queue}@%h",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
                "--loglevel=WARNING",
            ],
            cwd=ROOT,
            env={**os.environ, "FSB_BROKER": REDIS, "FSB_BACKEND": REDIS, "FSB_MODEL": model,
                 "FSB_HOLD": hold, "FSB_MARKER": marker},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process.pid
    finally:
        stop_session(process, 30)
        # The template and hosts are in a session of their own: they leave once
        # their clients and the master are gone. Wait for that, bounded.
        deadline = time.monotonic() + 30
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def measure(hold: str, children: int, model: str, log_dir: str) -> dict[str, Any]:
    """Start one pool, wait until every child answered, and take its memory."""
    from benchmarks.celery_app import classify

    queue = f"mem-{uuid.uuid4().hex[:8]}"
    marker = f"forksafe-bench-{uuid.uuid4().hex}"
    log = os.path.join(log_dir, f"{hold}.log")
    with _pool(hold, children, model, queue, f"FSB_MARKER={marker}", log) as master:
        answered: set[int] = set()
        deadline = time.monotonic() + 600
        while len(answered) < children:
            if time.monotonic() > deadline:
                with open(log, encoding="utf-8", errors="replace") as f:
                    raise RuntimeError(f"{hold}: not every child answered:\n{f.read()[-3000:]}")
            batch = [classify.apply_async((i,), queue=queue) for i in range(4 * children)]
            answered |= {r.get(timeout=300)["pid"] for r in batch}
        time.sleep(2.0)  # let warm-up threads and the template settle
        processes = {pid: _role(pid, master) for pid in marked(f"FSB_MARKER={marker}")}
        pss = {pid: _pss_kb(pid) / 1024 for pid in processes}
    roles: dict[str, int] = {}
    for role in processes.values():
        roles[role] = roles.get(role, 0) + 1
    return {
        "hold": hold,
        "children_answered": len(answered),
        "processes": roles,
        "pss_mb": {f"{processes[p]} {p}": round(v, 1) for p, v in sorted(pss.items())},
        "pss_total_mb": round(sum(pss.values()), 1),
    }


def render(data: dict[str, Any]) -> list[str]:
    """Both pools' total PSS and their ratio, for RESULTS.md."""
    memory = data["pool_memory"]
    out = ["## Memory of a pool whose master ran TensorFlow (`benchmarks/pool_memory.py`)", ""]
    if "skipped" in memory:
        return out + skipped(memory)
    out += [
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
    return [*out, "", f"Ratio poisoned / untouched: {memory['ratio']:.3f}."]


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A poisoned master's pool needs one template and about the memory of an untouched one."""
    memory = data.get("pool_memory", {})
    return [
        target(
            "Celery prefork -c 4, master ran TF: templates",
            memory.get("templates"),
            1,
            "",
            most=True,
        ),
        target(
            "same pool: total PSS / untouched-master pool",
            memory.get("ratio"),
            1.15,
            "",
            most=True,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Measure both pools and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=5000)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)
    if not redis_available():
        reason = f"no Redis server at {REDIS}"
        if os.environ.get("CI") == "true":
            raise SystemExit(f"pool memory benchmark: {reason}")
        emit(args.json, {"pool_memory": {"skipped": reason}}, render)
        return 0
    with tempfile.TemporaryDirectory() as directory:
        model = build_model(
            directory, "big.keras", inputs=64, hidden=(args.hidden, args.hidden), outputs=10
        )
        size_mb = os.path.getsize(model) / 1e6
        untouched = measure("proxy", args.children, model, directory)
        poisoned = measure("proxy-poisoned", args.children, model, directory)
    ratio = poisoned["pss_total_mb"] / untouched["pss_total_mb"]
    report = {
        "model_mb": round(size_mb, 1),
        "children": args.children,
        "untouched": untouched,
        "poisoned": poisoned,
        "ratio": ratio,
        "templates": poisoned["processes"].get("template", 0),
    }
    emit(args.json, {"pool_memory": report}, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
