"""What every benchmark shares: models built out of process, timing, summaries, JSON, pools."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


class Echo:
    """A framework-free model: its methods measure the transport alone."""

    def echo(self, x: Any) -> Any:
        """Return ``x``: a round trip of its bytes."""
        return x

    def noop(self) -> None:
        """Do nothing: a round trip of an empty message."""
        return None

    def busy(self, seconds: float) -> None:
        """Keep the CPU busy for ``seconds``, as a model's call would, then answer."""
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass


def _build_dense(path: str, inputs: int, hidden: tuple[int, ...], outputs: int) -> None:
    import keras

    layers: list[Any] = [keras.Input((inputs,))]
    layers += [keras.layers.Dense(size, activation="relu") for size in hidden]
    layers.append(keras.layers.Dense(outputs))
    keras.Sequential(layers).save(path)


def _build_cnn(path: str, side: int) -> None:
    import keras

    keras.applications.MobileNetV2(
        input_shape=(side, side, 3), weights=None, classes=10, alpha=1.0
    ).save(path)


def _build_legacy(path: str) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras

    tf_keras.Sequential(
        [
            tf_keras.Input((4,)),
            tf_keras.layers.Dense(8, activation="relu"),
            tf_keras.layers.Dense(3),
        ]
    ).save(path)


def _spawned(target: Callable[..., None], *args: Any) -> None:
    """Run ``target`` in a spawned process, so this one never starts a framework."""
    process = multiprocessing.get_context("spawn").Process(target=target, args=args)
    process.start()
    process.join(300)
    if process.exitcode != 0:
        process.kill()
        process.join()
        raise SystemExit(f"building a benchmark model with {target.__name__} failed")


def build_model(
    directory: str,
    name: str = "bench.keras",
    inputs: int = 4,
    hidden: tuple[int, ...] = (8,),
    outputs: int = 3,
) -> str:
    """Save a Dense model (default 4→8→3) from a spawned process; return its path."""
    path = os.path.join(directory, name)
    _spawned(_build_dense, path, inputs, hidden, outputs)
    return path


def build_cnn(directory: str, side: int = 96) -> str:
    """Save ``keras.applications.MobileNetV2`` (``weights=None``, 10 classes)."""
    path = os.path.join(directory, "cnn.keras")
    _spawned(_build_cnn, path, side)
    return path


def build_legacy_model(directory: str) -> str:
    """Save a tf_keras Dense 4→8→3 model as ``.h5`` (for TF1 graph mode)."""
    path = os.path.join(directory, "legacy.h5")
    _spawned(_build_legacy, path)
    return path


def summary(values: list[float]) -> dict[str, float]:
    """Min, median and max."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def per_call(fn: Callable[[], Any], calls: int) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def per_pair(
    base: Callable[[], Any], other: Callable[[], Any], pairs: int, start: int = 0
) -> tuple[float, float]:
    """Seconds per call of ``base`` and of ``other``, called in turn ``pairs`` times.

    Each call is timed on its own, and the two alternate which goes first
    (``other`` first in the first pair if ``start`` is odd): both see the same
    machine, and the same caches left by the other's call.
    """
    clock = time.perf_counter_ns
    spent = [0, 0]
    calls = (base, other)
    for index in range(start, start + pairs):
        first = index % 2
        for which in (first, 1 - first):
            start = clock()
            calls[which]()
            spent[which] += clock() - start
    return spent[0] / pairs / 1e9, spent[1] / pairs / 1e9


def compare(
    base: Callable[[], Any],
    other: Callable[[], Any],
    rounds: int,
    calls: int,
    *,
    alternate_calls: bool = False,
) -> dict[str, Any]:
    """``other`` against ``base`` in adjacent pairs, alternating which goes first.

    The ratio is the median of the per-round ratios: each pair shares the
    machine's state of that moment, so slow drifts (steal time on a shared
    VM) cancel, and alternating the order cancels any first-or-second bias.
    With ``alternate_calls`` (for calls long enough to time one by one) the
    two alternate call by call within a round instead of ``calls`` at a time.
    """
    base(), other()  # warm up (tf.function tracing)
    b, o = [], []
    for index in range(rounds):
        if alternate_calls:
            base_s, other_s = per_pair(base, other, calls, start=index)
            b.append(base_s)
            o.append(other_s)
        elif index % 2:
            o.append(per_call(other, calls))
            b.append(per_call(base, calls))
        else:
            b.append(per_call(base, calls))
            o.append(per_call(other, calls))
    ratios = [x / y for x, y in zip(o, b, strict=True)]
    return {
        "bare_us": summary([v * 1e6 for v in b]),
        "proxy_us": summary([v * 1e6 for v in o]),
        "ratio": statistics.median(ratios),
        "ratio_ci95": median_ci(ratios),
        "added_ns": (statistics.median(o) - statistics.median(b)) * 1e9,
    }


def median_ci(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval for the median of ``values`` (fixed seed: reproducible)."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def write_json(path: str | None, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` when one was given."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)


def marked(needle: str) -> list[int]:
    """Live (not zombie) processes whose environment holds ``needle``."""
    encoded = needle.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if encoded not in f.read():
                    continue
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def stop_marked(process: subprocess.Popen[bytes], marker: str, wait: float) -> None:
    """Stop a server's session, then whatever else carries ``marker`` (its shared host).

    The shared host is in a session of its own and would stay for its grace
    period: it is killed once it has seen its clients go. Shared-memory
    segments of processes killed before they could unlink them are swept.
    """
    everyone = set(marked(marker))
    stop_session(process, wait)
    time.sleep(0.5)
    for pid in marked(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while not all(gone(pid) for pid in everyone) and time.monotonic() < deadline:
        time.sleep(0.05)
    from forksafe._host.shm import sweep

    for pid in everyone:
        sweep(pid)


def stop_session(process: subprocess.Popen[bytes], wait: float) -> None:
    """Stop a server started with ``start_new_session``: SIGTERM to its group, then SIGKILL.

    Each signal gets ``wait`` seconds for the leader to exit.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
            return
        except (subprocess.TimeoutExpired, ProcessLookupError):
            continue
    if process.poll() is None:  # left its group
        process.kill()
        process.wait(wait)
