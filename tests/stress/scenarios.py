"""Stress scenarios, run in clean processes; each returns its figures.

Counts scale with FORKSAFE_STRESS: ``full`` (``nox -s stress``) or reduced
(the default, for CI).
"""

from __future__ import annotations

import faulthandler
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import forksafe
from forksafe._childrun import Forked, ForkTimeoutError, finish_fork, start_fork
from tests.models import Models
from tests.support.children import fork_call
from tests.support.fakes import NumpyModel

FULL = os.environ.get("FORKSAFE_STRESS") == "full"


def count(full: int, reduced: int) -> int:
    """The count for this run."""
    return full if FULL else reduced


def _classified(child: Forked, began: float, limit: float) -> tuple[str, Any] | None:
    """A child's answer: ``("ok", value)``, ``("forksafe-error", name)``, ``("other-error", text)``.

    ``None`` when it did not answer within ``limit`` s of ``began`` (a hang: it was killed).
    """
    try:
        return ("ok", finish_fork(child, began + limit, limit))
    except ForkTimeoutError:
        return None
    except forksafe.ForkSafeError as exc:
        return ("forksafe-error", type(exc).__name__)
    except BaseException as exc:
        return ("other-error", f"{type(exc).__name__}: {exc}")


def forks_in_waves(fn: Callable[[], Any], total: int, wave: int, limit: float) -> dict[str, Any]:
    """Fork ``total`` children ``wave`` at a time; each must answer within ``limit`` s."""
    outcomes: list[tuple[str, Any]] = []
    latencies: list[float] = []
    hangs = 0
    for start in range(0, total, wave):
        batch = []
        for _ in range(min(wave, total - start)):
            began = time.monotonic()
            batch.append((start_fork(fn), began))
        for child, began in batch:
            outcome = _classified(child, began, limit)
            if outcome is None:
                hangs += 1
            else:
                latencies.append(time.monotonic() - began)
                outcomes.append(outcome)
    return {
        "tried": total,
        "hangs": hangs,
        "outcomes": outcomes,
        "max_latency_s": max(latencies, default=0.0),
    }


def fork_storm(models: Models) -> dict[str, Any]:
    """Children (and grandchildren) of a parent holding loaded and unloaded proxies."""
    x, reference = models.reference()
    keras_proxy = forksafe.load_model(models.keras)  # unloaded: this process never runs TF
    numpy_proxy = forksafe.lazy_model(NumpyModel, 2.0)
    numpy_proxy.predict  # noqa: B018  (loaded here)

    def child() -> Any:
        if numpy_proxy.built_in != os.getpid():
            raise AssertionError("reused the parent's model")
        # A grandchild forked while this child is still untouched rebuilds in-process.
        grandchild = forks_in_waves(lambda: numpy_proxy.built_in == os.getpid(), 1, 1, 5.0)
        y = np.asarray(keras_proxy.predict_on_batch(x))
        return bool(np.allclose(y, reference, atol=1e-5)) and grandchild["outcomes"] == [
            ("ok", True)
        ]

    total = count(1000, 60)
    result = forks_in_waves(child, total, wave=4, limit=5.0)
    result["right"] = sum(1 for outcome in result["outcomes"] if outcome == ("ok", True))
    result["wrong"] = [o for o in result["outcomes"] if o != ("ok", True)][:5]
    return result


def fork_storm_poisoned(models: Models) -> dict[str, Any]:
    """Children of a parent that ran TensorFlow: each refuses with ForkSafeError, fast."""
    x, _ = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="inprocess")
    proxy.predict_on_batch(x)
    result = forks_in_waves(lambda: proxy.predict_on_batch(x), count(1000, 60), 8, 5.0)
    result["refused"] = sum(1 for o in result["outcomes"] if o[0] == "forksafe-error")
    result["outcomes"] = result["outcomes"][:3]
    return result


def thread_storm(models: Models, threads: int, calls: int, fork_every: float) -> dict[str, Any]:
    """``threads`` threads x ``calls`` calls racing the first load; optional forks meanwhile."""
    x, reference = models.reference()
    proxy = forksafe.load_model(models.keras)
    barrier = threading.Barrier(threads)
    wrong: list[str] = []
    done = threading.Event()

    def worker() -> None:
        try:
            barrier.wait(30)
            for _ in range(calls):
                if not np.allclose(proxy.predict_on_batch(x), reference, atol=1e-5):
                    wrong.append("numbers")
        except BaseException as exc:
            wrong.append(repr(exc))

    forks = {"tried": 0, "hangs": 0, "reused": 0}

    def forker() -> None:
        while True:  # forks first, then waits: at least one fork races the threads
            # The child must not hold the parent's model (nor load: its runtime is dead).
            result = forks_in_waves(lambda: forksafe.info(proxy).loaded, 1, 1, 5.0)
            forks["tried"] += 1
            forks["hangs"] += result["hangs"]
            forks["reused"] += sum(1 for o in result["outcomes"] if o != ("ok", False))
            if done.wait(fork_every):
                break

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    side = threading.Thread(target=forker) if fork_every else None
    start = time.monotonic()
    for thread in pool:
        thread.start()
    if side:
        side.start()
    for thread in pool:
        thread.join(600)
    done.set()
    if side:
        side.join(60)
    return {
        "threads": threads,
        "calls": threads * calls,
        "loads": forksafe.info(proxy).loads,
        "wrong": wrong[:5],
        "seconds": time.monotonic() - start,
        "forks": forks,
    }


def fork_during_load(models: Models) -> dict[str, Any]:
    """Fork at a random moment while another thread loads: answer or refuse, never hang.

    Each attempt runs in its own child of this untouched process, so every
    attempt starts with TensorFlow imported but not started.
    """
    x, reference = models.reference()

    def attempt(seed: int) -> str:
        proxy = forksafe.load_model(models.keras, isolation="inprocess")
        loader = threading.Thread(target=lambda: proxy.predict_on_batch(x), daemon=True)
        loader.start()
        time.sleep(random.Random(seed).uniform(0, 0.3))
        result = forks_in_waves(lambda: np.asarray(proxy.predict_on_batch(x)), 1, 1, 5.0)
        loader.join(60)
        if result["hangs"]:
            return "hang"
        kind, value = result["outcomes"][0]
        if kind == "ok":
            return "answered" if np.allclose(value, reference, atol=1e-5) else "wrong"
        return "refused" if kind == "forksafe-error" else f"wrong: {value}"

    tally: dict[str, int] = {}
    total = count(200, 16)
    for seed in range(total):
        result = forks_in_waves(lambda seed=seed: attempt(seed), 1, 1, 60.0)
        outcome = result["outcomes"][0][1] if result["outcomes"] else "hang"
        if result["outcomes"] and result["outcomes"][0][0] != "ok":
            outcome = f"attempt failed: {result['outcomes'][0][1]}"
        tally[outcome] = tally.get(outcome, 0) + 1
    return {"tried": total, "tally": tally}


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, truncate, insert or zero bytes at random offsets."""
    out = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del out[rng.randrange(1, len(out)) :]
    elif kind == 2:
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(rng.randint(1, 64))
    else:
        at = rng.randrange(len(out))
        out[at : at + rng.randint(1, 256)] = bytes(min(256, len(out) - at))
    return bytes(out)


def _bare_load_hangs(path: str) -> bool:
    """Whether Keras' own load of ``path`` (a child of this untouched process) hangs too.

    Hangs: still loading at twice the host's bound (``timeout=5`` below).
    """
    import keras

    return fork_call(keras.models.load_model, path, timeout=10).timed_out


def fuzz(
    path: str, suffix: str, directory: str, seed: int, total: int, isolation: str
) -> dict[str, Any]:
    """Load ``total`` mutations of ``path``; only documented outcomes are allowed.

    In-process loads are watched: one that takes over 60 s dumps its stacks
    and ends this process, which the test sees as a hang. With
    ``isolation="process"`` the host's ``timeout`` bounds each load instead.
    """
    with open(path, "rb") as f:
        original = f.read()
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    undocumented: list[str] = []
    slowest = 0.0
    for index in range(total):
        target = os.path.join(directory, f"fuzzed-{index}{suffix}")
        with open(target, "wb") as f:
            f.write(mutate(original, rng))
        faulthandler.dump_traceback_later(60, exit=True)
        start = time.monotonic()
        try:
            forksafe.load_model(target, isolation=isolation, timeout=5).predict  # noqa: B018
            key = "loaded"
        except forksafe.HostTimeoutError:
            # Bounded, as promised, only if the file makes the framework itself hang.
            key = "HostTimeoutError" + (" (bare load hangs)" if _bare_load_hangs(target) else "")
        except (forksafe.ModelLoadError, forksafe.HostCrashedError) as exc:
            key = type(exc).__name__
        except Exception as exc:
            key = "undocumented"
            undocumented.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            faulthandler.cancel_dump_traceback_later()
        os.unlink(target)
        slowest = max(slowest, time.monotonic() - start)
        outcomes[key] = outcomes.get(key, 0) + 1
    return {
        "tried": total,
        "isolation": isolation,
        "outcomes": outcomes,
        "undocumented": undocumented[:5],
        "slowest_s": slowest,
    }
