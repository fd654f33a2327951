"""Out-of-process host costs, each against its baseline in the same run.

- start: a host forked from the template (first: template included) vs a
  spawn-started process that imports Keras;
- per call: ``predict_on_batch`` through a host vs in this process, and a
  no-op method (pure transport);
- throughput: round trips of 1, 16 and 64 MB arrays.

    python -m benchmarks.host [--rounds 7] [--calls 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import forksafe
from benchmarks._common import Echo, build_model, per_call, summary
from benchmarks._render import emit, mmm, target


def _spawned_ready(conn: Any) -> None:
    import keras  # noqa: F401  (what a host needs before it can load)

    conn.send("ready")


def spawn_start() -> float:
    """Seconds until a spawn-started process that imported Keras says it is ready."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    process = ctx.Process(target=_spawned_ready, args=(sender,))
    process.start()
    ready = receiver.poll(120)
    elapsed = time.perf_counter() - start
    process.join(10)
    if not ready:
        process.kill()
        raise RuntimeError("spawned process did not start")
    return elapsed


def host_start(path: str) -> dict[str, Any]:
    """Host start, model load included: the first (template too) and later ones."""
    first_start = time.perf_counter()
    first = forksafe.load_model(path, isolation="process")
    first.name  # noqa: B018
    first_seconds = time.perf_counter() - first_start
    later = []
    for _ in range(5):
        start = time.perf_counter()
        proxy = forksafe.load_model(path, isolation="process")
        proxy.name  # noqa: B018
        later.append(time.perf_counter() - start)
        del proxy
    transport = []
    for _ in range(5):
        start = time.perf_counter()
        proxy = forksafe.lazy_model(Echo, isolation="process")
        proxy.noop()
        transport.append(time.perf_counter() - start)
        del proxy
    spawned = [spawn_start() for _ in range(3)]
    return {
        "first_host_with_template_s": first_seconds,
        "later_host_with_load_s": summary(later),
        "later_host_without_model_s": summary(transport),
        "spawn_import_keras_s": summary(spawned),
        "ratio_later_host_vs_spawn": statistics.median(later) / statistics.median(spawned),
    }


def _raw_server(path: str, conn: Any) -> None:
    """The least any out-of-process design does: load, then unpickle, predict, pickle."""
    import keras

    model = keras.models.load_model(path)
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        result = model.predict_on_batch(pickle.loads(data))
        conn.send_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def raw_server(path: str) -> tuple[Any, Callable[[np.ndarray], Any]]:
    """A spawned hand-written model server on a pipe, and a function that calls it."""
    ctx = multiprocessing.get_context("spawn")
    client, server = ctx.Pipe()
    process = ctx.Process(target=_raw_server, args=(path, server), daemon=True)
    process.start()
    server.close()

    def call(x: np.ndarray) -> Any:
        client.send_bytes(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
        if not client.poll(60):
            raise RuntimeError("the hand-written server did not answer")
        return pickle.loads(client.recv_bytes())

    return process, call


def _after_wait(local: Any, echo: Any, x: np.ndarray, calls: int) -> float:
    """Seconds per in-process call made right after this process blocked on a round trip."""
    total = 0.0
    for _ in range(calls):
        echo.noop()  # the process sleeps in recv, as a client waiting on its host does
        start = time.perf_counter()
        local.predict_on_batch(x)
        total += time.perf_counter() - start
    return total / calls


def per_call_cost(path: str, rounds: int, calls: int) -> dict[str, Any]:
    """Added latency of a small call through a host, and where it goes."""
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    local = forksafe.load_model(path, isolation="inprocess")
    hosted = forksafe.load_model(path, isolation="process")
    echo = forksafe.lazy_model(Echo, isolation="process")
    server, raw = raw_server(path)
    local.predict_on_batch(x), hosted.predict_on_batch(x), echo.noop(), raw(x)
    # How long the host stays busy in the "busy" round trip: as long as a call.
    call_s = statistics.median(per_call(lambda: local.predict_on_batch(x), calls) for _ in "abc")
    base, remote, noop, busy, waited, plain = [], [], [], [], [], []
    for _ in range(rounds):
        plain.append(per_call(lambda: raw(x), calls))
        base.append(per_call(lambda: local.predict_on_batch(x), calls))
        remote.append(per_call(lambda: hosted.predict_on_batch(x), calls))
        noop.append(per_call(echo.noop, calls))
        busy.append(per_call(lambda: echo.busy(call_s), calls) - call_s)
        waited.append(_after_wait(local, echo, x, calls))
    server.kill()
    server.join(10)
    host, tight = statistics.median(remote), statistics.median(base)
    return {
        "raw_server_us": summary([v * 1e6 for v in plain]),
        "added_vs_raw_server_us": (host - statistics.median(plain)) * 1e6,
        "inprocess_us": summary([v * 1e6 for v in base]),
        "host_us": summary([v * 1e6 for v in remote]),
        "added_us": (host - tight) * 1e6,
        "noop_round_trip_us": summary([v * 1e6 for v in noop]),
        # The same round trip while the host keeps the CPU busy as long as a
        # call does (no framework): what it costs on top of the busy time.
        # On a VM a process that blocked longer wakes up later.
        "busy_for_s": call_s,
        "busy_round_trip_extra_us": summary([v * 1e6 for v in busy]),
        # TensorFlow's own cost of a call that follows an idle wait: a host's
        # every call does (it sleeps in recv between requests).
        "inprocess_after_wait_us": summary([v * 1e6 for v in waited]),
        "unexplained_us": (host - tight - statistics.median(busy)) * 1e6,
    }


def throughput(rounds: int) -> dict[str, Any]:
    """MB/s of array round trips (bytes sent plus bytes received, per second)."""
    echo = forksafe.lazy_model(Echo, isolation="process")
    echo.noop()
    results = {}
    for mb in (1, 16, 64):
        array = np.random.default_rng(mb).standard_normal(mb * 1024 * 1024 // 8)
        assert echo.echo(array).tobytes() == array.tobytes()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            echo.echo(array)
            times.append(time.perf_counter() - start)
        results[f"{mb}MB"] = {
            "seconds": summary(times),
            "MB_per_s": 2 * mb / statistics.median(times),
        }
    return results


def render(data: dict[str, Any]) -> list[str]:
    """Start, per-call and throughput figures of a host, for RESULTS.md."""
    st, pc = data["start"], data["per_call"]
    out = [
        "## Out-of-process host (`benchmarks/host.py`)",
        "",
        "| figure | value | baseline in the same run |",
        "| --- | --- | --- |",
        f"| first host (template start, Keras import, load) | "
        f"{st['first_host_with_template_s']:.2f} s | spawned process importing Keras: "
        f"{mmm(st['spawn_import_keras_s'], fmt='.2f')} s |",
        f"| later host, model load included | {mmm(st['later_host_with_load_s'], fmt='.3f')} s"
        f" | ratio to spawn {st['ratio_later_host_vs_spawn']:.3f} |",
        f"| later host, no model | {mmm(st['later_host_without_model_s'], 1e3)} ms | |",
        f"| no-op method round trip | {mmm(pc['noop_round_trip_us'])} µs | |",
        f"| same round trip while the host spins {pc['busy_for_s'] * 1e6:.0f} µs (as long "
        f"as the call below), beyond that time | {mmm(pc['busy_round_trip_extra_us'])} µs "
        "| no-op round trip above |",
        f"| `predict_on_batch` (Dense, batch 8) | {mmm(pc['host_us'])} µs | in-process "
        f"{mmm(pc['inprocess_us'])} µs: {pc['added_us']:+.0f} µs |",
        f"| same, in-process right after an idle wait (as a host always is) | "
        f"{mmm(pc['inprocess_after_wait_us'])} µs | tight loop above |",
        f"| same, through a hand-written spawned server on a `multiprocessing` pipe | "
        f"{mmm(pc['raw_server_us'])} µs | the host adds {pc['added_vs_raw_server_us']:+.0f} µs"
        " to it |",
    ]
    for size, row in data["throughput"].items():
        out.append(
            f"| {size} array round trip | {mmm(row['seconds'], 1e3)} ms, "
            f"{row['MB_per_s']:.0f} MB/s | |"
        )
    return [*out, "", "MB/s counts bytes sent plus bytes received."]


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A later host starts fast, adds little to a small call and moves big arrays fast."""
    start, call = data.get("start"), data.get("per_call")
    big = data.get("throughput", {}).get("64MB")
    return [
        target(
            "later host start (model load included)",
            start and start["later_host_with_load_s"]["median"],
            0.3,
            " s",
            most=True,
        ),
        target("host added latency, small call", call and call["added_us"], 150, " µs", most=True),
        target("host 64 MB round trip", big and big["MB_per_s"] / 1000, 1.0, " GB/s", most=False),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the host benchmarks and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--json", default=None)
    args, _ = parser.parse_known_args(argv)  # nox passes the same posargs to every benchmark
    with tempfile.TemporaryDirectory() as directory:
        path = build_model(directory)
        report = {
            "start": host_start(path),
            "per_call": per_call_cost(path, args.rounds, args.calls),
            "throughput": throughput(args.rounds),
        }
    emit(args.json, report, render)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
