"""The differential suite: every usage on a bare model and on proxies of the same file.

Each flavor (Keras 3 on TensorFlow, tf_keras eager, tf_keras in TF1 graph
mode) runs all its usages in one interpreter of its own, the three at once;
each test then compares one usage's outcomes: equal results, the same
exception type, or one of the differences below, each documented in
docs/differences.md (its key names the section) and checked for exactly its shape.
Usages marked ``host`` also run through a model host (``isolation="process"``).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.models import Models
from tests.transparency.compare import same_outcome, same_value, show
from tests.transparency.runner import FLAVORS
from tests.transparency.usages import USAGES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "differences.md"
RUN_TIMEOUT = 600

pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 60)

Outcome = tuple[Any, ...]


@dataclass(frozen=True)
class Difference:
    """A documented difference: its section in docs/differences.md and the check of its shape."""

    doc: str
    check: Callable[[Outcome, Outcome, np.ndarray], bool]


def _raised(kind: str, text: str = "") -> Callable[[Outcome], bool]:
    return lambda o: o[0] == "raised" and o[1] == kind and text in o[2]


def _answers(o: Outcome, y: np.ndarray) -> bool:
    return o[0] == "ok" and o[1][0] in ("array", "tensor") and np.allclose(o[1][1], y, atol=1e-4)


TYPE = Difference(
    "type(proxy) is ModelProxy",
    lambda bare, proxy, y: (
        (bare[0] == "ok" and proxy in (("ok", "ModelProxy"),))
        or _raised("AttributeError", "ModelProxy")(proxy)
    ),
)
HOST_NUMPY = Difference(
    "Through a host, results are numpy arrays",
    lambda bare, host, y: (
        bare[1][0] == "tensor"
        and host[1][0] == "array"
        and same_value(("array", bare[1][1]), host[1])
    ),
)
HOST_PLAIN_DATA = Difference(
    "Through a host, only plain data crosses", lambda bare, host, y: _raised("HostError")(host)
)
SERIALIZED = Difference(
    "Keras on JAX: threads share the model through the proxy",
    lambda bare, proxy, y: (
        proxy[0] == "ok"
        and all(_answers(("ok", r), y) for r in proxy[1][1])
        and (same_outcome(bare, proxy) or any(not isinstance(r, tuple) for r in bare[1][1]))
    ),
)
PICKLE_SOURCE = Difference(
    "A proxy pickles as its source",
    lambda bare, proxy, y: not _answers(bare, y) and _answers(proxy, y),
)
ONE_PER_PROCESS = Difference(
    "Two unpickles in one process share one model",
    lambda bare, proxy, y: bare == ("ok", False) and proxy == ("ok", True),
)
FORK = Difference(
    "Fork",
    # Keras on torch runs the tiny model's ops inline, so its bare child answers too.
    lambda bare, proxy, y: (
        (bare == ("ok", "hung (killed after 10 s)") or _answers(bare, y)) and _answers(proxy, y)
    ),
)
HOST_ERROR = Difference(
    "Through a host, other exception classes arrive as their builtin base",
    lambda bare, host, y: (
        bare[0] == "raised" and host[0] == "raised" and f".{bare[1]}: " in host[2]
    ),
)
DUNDER_BEFORE_USE = Difference(
    "Before it loads, dunder names the proxy lacks are missing",
    lambda bare, proxy, y: (
        bare == ("ok", ("tuple", [True, False])) and proxy == ("ok", ("tuple", [False, False]))
    ),
)
OWN_GRAPH = Difference(
    "TF1 graph mode: the model has a graph of its own",
    lambda bare, proxy, y: bare[0] == "ok" and _raised("ValueError", "graph")(proxy),
)
GRAPH_BETTER = Difference(
    "TF1 graph mode: what works only through the proxy",
    lambda bare, proxy, y: (
        bare[0] == "raised"
        or (
            bare[0] == "ok"
            and any(isinstance(r, str) for r in bare[1][1])
            and proxy[0] == "ok"
            and all(not isinstance(r, str) for r in proxy[1][1])
        )
    ),
)

DIFFERENCES: dict[tuple[str, str, str], Difference] = {
    **{("type_of", "proxy", f): TYPE for f in FLAVORS},
    **{("model_from_config", "proxy", f): TYPE for f in FLAVORS},
    **{(u, "host", f): HOST_NUMPY for u in ("call_numpy", "call_training_false") for f in FLAVORS},
    **{("compile_fit_through_methods", "host", f): HOST_PLAIN_DATA for f in FLAVORS},
    **{("threads_share_the_model", k, "keras3"): SERIALIZED for k in ("proxy", "host")},
    **{("pickle_after_set_weights", "proxy", f): PICKLE_SOURCE for f in FLAVORS},
    **{("pickle_twice_in_one_process", "proxy", f): ONE_PER_PROCESS for f in FLAVORS},
    **{("fork_child_predicts", k, f): FORK for k in ("proxy", "host") for f in FLAVORS},
    **{
        ("dunder_lookup_before_use", k, f): DUNDER_BEFORE_USE
        for k in ("proxy", "host")
        for f in FLAVORS
    },
    **{
        (u, "proxy", "tf1"): OWN_GRAPH
        for u in (
            "call_a_sublayer",
            "sublayer_weights",
            "compose_functional",
            "compose_sequential",
            "lambda_layer",
            "composed_model_saved_and_reloaded",
        )
    },
    **{
        (u, "proxy", "tf1"): GRAPH_BETTER
        for u in (
            "copy_copy",
            "deepcopy",
            "tf_keras_clear_session_then_predict",
            "thread_predicts_after_main_loaded",
        )
    },
}

# Differences that are bugs outside this suite's reach: strict, so a fix makes them fail.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}


def cases() -> list[Any]:
    """One test per (flavor, kind, usage); known bugs as strict expected failures."""
    found = []
    for usage in USAGES:
        for flavor in FLAVORS:
            if flavor not in usage.flavors:
                continue
            kinds = ["proxy"] + (["host"] if usage.host and flavor != "tf1" else [])
            for kind in kinds:
                key = (usage.name, kind, flavor)
                marks = (
                    [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])]
                    if key in KNOWN_BUGS
                    else []
                )
                found.append(pytest.param(*key, id=f"{flavor}-{kind}-{usage.name}", marks=marks))
    return found


@pytest.fixture(scope="module")
def outcomes(models: Models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the three flavors at once, each in an interpreter of its own; their outcomes."""
    out = tmp_path_factory.mktemp("transparency")
    running = {}
    for flavor in FLAVORS:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        if flavor != "keras3":
            env["TF_USE_LEGACY_KERAS"] = "1"
        log = open(out / f"{flavor}.log", "wb")  # noqa: SIM115 (closed below)
        command = [sys.executable, "-m", "tests.transparency.runner", flavor, models.directory]
        process = subprocess.Popen(
            [*command, str(out / f"{flavor}.pkl")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        running[flavor] = (process, log)
    results = {}
    try:
        for flavor, (process, log) in running.items():
            code = process.wait(RUN_TIMEOUT)
            log.close()
            tail = (out / f"{flavor}.log").read_text(errors="replace")[-3000:]
            assert code == 0, f"the {flavor} runner failed (exit {code}):\n{tail}"
            with open(out / f"{flavor}.pkl", "rb") as f:
                results[flavor] = pickle.load(f)
    finally:
        for process, log in running.values():
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()
            log.close()
    return results


@pytest.mark.parametrize(("usage", "kind", "flavor"), cases())
def test_usage(
    outcomes: dict[str, Any], models: Models, usage: str, kind: str, flavor: str
) -> None:
    """The proxy (or host) does what the bare model does, or differs exactly as documented."""
    row = outcomes[flavor][usage]
    bare, other = row["bare"], row[kind]
    difference = DIFFERENCES.get((usage, kind, flavor))
    if difference is None and kind == "host" and HOST_ERROR.check(bare, other, np.empty(0)):
        difference = HOST_ERROR  # any usage: a host never imports the class it names
    if difference is None:
        assert same_outcome(bare, other), f"bare {show(bare)}\n{kind} {show(other)}"
    else:
        _, y = models.reference()
        assert difference.check(bare, other, y), (
            f"not the documented difference {difference.doc!r}:\n"
            f"bare {show(bare)}\n{kind} {show(other)}"
        )


def test_suite_covers_enough() -> None:
    """At least 80 usages, every flavor, and a host column."""
    assert len(USAGES) >= 80
    for flavor in FLAVORS:
        assert sum(flavor in u.flavors for u in USAGES) >= 40, flavor
    assert sum(u.host for u in USAGES) >= 20


def test_every_difference_is_documented() -> None:
    """Each documented difference names a section of docs/differences.md; each key, a usage."""
    text = DOCS.read_text(encoding="utf-8")
    names = {u.name for u in USAGES}
    for (usage, _, _), difference in DIFFERENCES.items():
        assert usage in names, usage
        assert f"\n## {difference.doc}\n" in text, difference.doc
    assert f"\n## {HOST_ERROR.doc}\n" in text
    for usage, _, _ in KNOWN_BUGS:
        assert usage in names, usage
