"""The differential suite: every usage on a bare model and on proxies of the same file.

Each flavor (Keras 3 on TensorFlow, tf_keras eager, tf_keras in TF1 graph
mode) runs all its usages in one interpreter of its own, the three at once;
each test then compares one usage's outcomes strictly (``compare.py``): equal
results by value, or the same exception with the same message, and the model
as usable after as the bare one; or one of the differences below, each
documented in docs/differences.md (its key names the section) and checked for
exactly its shape. The proxy runs with the default isolation (in effect
``"inprocess"``, a host in a fork child of the runner); usages marked
``host`` also run through a private host (``"process"``) and a shared one
(``"shared"``), where the "Through a host" differences apply to both.
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
from tests.support.procs import stop_group
from tests.transparency.compare import same_outcome, same_value, show
from tests.transparency.runner import FLAVORS, HOSTED
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
    # The model after the usage, where the difference is what the usage leaves behind;
    # None: the same as the bare model's.
    after: Callable[[Outcome, Outcome, np.ndarray], bool] | None = None


def _raised(kind: str, text: str = "") -> Callable[[Outcome], bool]:
    return lambda o: o[0] == "raised" and o[1] == kind and text in o[2]


def _no_errors(value: Any, y: np.ndarray) -> bool:
    """A normalized result with no error text in it, whose arrays of ``y``'s shape equal ``y``."""
    if isinstance(value, str):
        return False
    if isinstance(value, tuple) and value and value[0] in ("array", "tensor"):
        return np.shape(value[1]) != np.shape(y) or np.allclose(value[1], y, atol=1e-4)
    if isinstance(value, tuple) and value and value[0] in ("tuple", "list"):
        return all(_no_errors(v, y) for v in value[1])
    if isinstance(value, tuple) and value and value[0] == "dict":
        return all(_no_errors(v, y) for v in value[1].values())
    return True


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
    # Keras on torch runs the tiny model's ops inline, so its bare child answers too; a
    # bare tf_keras child crashed (SIGSEGV) instead of hanging when it ran after fewer
    # usages (seen with the usages split over two interpreters).
    lambda bare, proxy, y: (
        (
            bare == ("ok", "hung (killed after 10 s)")
            or _raised("ChildCrashedError", "killed by signal")(bare)
            or _answers(bare, y)
        )
        and _answers(proxy, y)
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
    # The bare model fails (raises, or a thread reports an error) where the proxy answers.
    lambda bare, proxy, y: (
        proxy[0] == "ok"
        and _no_errors(proxy[1], y)
        and (bare[0] == "raised" or any(isinstance(r, str) for r in bare[1][1]))
    ),
    # The bare model may stay broken (clear_session); the proxy's answers on.
    after=lambda bare, proxy, y: _answers(proxy, y),
)


def _kept_method(bare: Outcome, proxy: Outcome, y: np.ndarray) -> bool:
    # Right after the class is patched, before a call: the kept method, not the mock.
    if bare == ("ok", True):
        return proxy == ("ok", False)
    if bare == ("ok", 0):
        return _raised("AttributeError", "call_count")(proxy)
    # A kept method calls the replacement; the bare one, the method it was taken from.
    patched = proxy[0] == "ok" and proxy[1][0] == "tuple" and proxy[1][1][0] == "patched"
    return _answers(bare, y) and patched


KEPT_METHOD = Difference("A method of the model's class is kept by the proxy", _kept_method)

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
        (u, "proxy", f): KEPT_METHOD
        for u in (
            "method_taken_then_replaced_on_its_class",
            "method_identity_after_its_class_is_patched",
            "mock_attribute_after_its_class_is_patched",
        )
        for f in FLAVORS
    },
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
            kinds = ["proxy"] + (list(HOSTED) if usage.host and flavor != "tf1" else [])
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
            stop_group(process, grace=2.0)
            log.close()
    return results


@pytest.mark.parametrize(("usage", "kind", "flavor"), cases())
def test_usage(
    outcomes: dict[str, Any], models: Models, usage: str, kind: str, flavor: str
) -> None:
    """The proxy (or host) does what the bare model does, or differs exactly as documented."""
    row = outcomes[flavor][usage]
    bare, other = row["bare"], row[kind]
    _, y = models.reference()
    difference = documented(usage, kind, flavor)
    if difference is None and kind in HOSTED and HOST_ERROR.check(bare, other, y):
        difference = HOST_ERROR  # any usage: a host never imports the class it names
    if difference is None:
        assert same_outcome(bare, other), f"bare {show(bare)}\n{kind} {show(other)}"
    else:
        assert difference.check(bare, other, y), (
            f"not the documented difference {difference.doc!r}:\n"
            f"bare {show(bare)}\n{kind} {show(other)}"
        )
    # Whatever the usage did (raised included), the model is as usable after as the bare
    # one, or left exactly as the documented difference says.
    after, other_after = row["bare_after"], row[f"{kind}_after"]
    left = difference.after if difference is not None else None
    same = left(after, other_after, y) if left else same_outcome(after, other_after)
    assert same, f"after the usage: bare {show(after)}\n{kind} {show(other_after)}"


def documented(usage: str, kind: str, flavor: str) -> Difference | None:
    """The documented difference of a case; the shared host's are the private host's."""
    found = DIFFERENCES.get((usage, kind, flavor))
    if found is None and kind == "shared":
        found = DIFFERENCES.get((usage, "host", flavor))
    return found


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
