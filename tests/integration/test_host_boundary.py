"""What crosses the host boundary, and what must not: answers, output, methods, code, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import forksafe
from tests import host_scenarios
from tests.helpers import fork_call, run_clean
from tests.models import Models
from tests.support import requires

pytestmark = pytest.mark.timeout(300)


class SoftTimeLimit(Exception):
    """Raised by a signal handler, as Celery's soft time limit is."""


def _raise_soft_limit(signum: int, frame: Any) -> None:
    raise SoftTimeLimit()


@pytest.mark.parametrize("interrupt", ["signal handler that raises", "SIGINT"])
def test_an_interrupted_call_never_answers_a_later_one(
    probe: forksafe.ModelProxy, interrupt: str
) -> None:
    """Interrupted 0.5 s into a 2 s call: every later call gets its own answer, three rounds."""
    expected: type[BaseException]
    if interrupt == "SIGINT":
        sig, expected = signal.SIGINT, KeyboardInterrupt
        previous = signal.signal(sig, signal.default_int_handler)
    else:
        sig, expected = signal.SIGUSR2, SoftTimeLimit
        previous = signal.signal(sig, _raise_soft_limit)
    try:
        for _ in range(3):
            np.testing.assert_array_equal(probe.predict(np.zeros(2)), np.zeros(2))
            timer = threading.Timer(0.5, os.kill, (os.getpid(), sig))
            timer.start()
            with pytest.raises(expected):
                probe.hold(np.full(2, 7.0), 2.0)
            timer.join()
            for k in (1.0, 3.0):
                np.testing.assert_array_equal(probe.predict(np.full(2, k)), np.full(2, 2 * k))
    finally:
        signal.signal(sig, previous)


def _client(code: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a client script in a fresh interpreter, bounded; its output."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )


def test_host_output_goes_to_the_clients_stderr() -> None:
    """A factory and a method that print: their output reaches the client's stderr, not stdout."""
    result = _client("""
        import forksafe
        from tests.scenarios import printing_factory
        proxy = forksafe.lazy_model(
            printing_factory, "the factory", isolation="process", timeout=60
        )
        print("answer:", proxy.shout("the model"))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "answer: the model"
    for text in ("the factory: building the model", "the model on stdout", "the model on stderr"):
        assert text in result.stderr


def test_keras_predict_with_its_progress_bar_through_a_host(models: Models) -> None:
    """``predict(x)`` with Keras' default progress bar answers through a host."""
    x, reference = models.reference()
    proxy = forksafe.load_model(models.keras, isolation="process", timeout=120)
    np.testing.assert_allclose(proxy.predict(x), reference, atol=1e-5)
    np.testing.assert_allclose(proxy.predict(x, verbose=1), reference, atol=1e-5)


def test_a_method_taken_before_a_fork_follows_the_proxy(probe: forksafe.ModelProxy) -> None:
    """``predict = MODEL.predict`` used in a fork child, while the parent calls it too.

    Every answer in both processes is right; the child gets a host of its own
    and the parent keeps its host.
    """
    predict = probe.predict
    parent_host = probe.pid()
    wrong: list[Any] = []
    stop = threading.Event()

    def parent_calls() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if not np.array_equal(predict(np.full(3, float(i))), np.full(3, 2.0 * i)):
                wrong.append(i)

    thread = threading.Thread(target=parent_calls)
    thread.start()
    try:

        def child() -> tuple[list[int], int | None]:
            bad = [
                i
                for i in range(50)
                if not np.array_equal(predict(np.full(3, -i)), np.full(3, -2 * i))
            ]
            return bad, forksafe.info(probe).host_pid

        child_wrong, child_host = fork_call(child, timeout=60).get()
    finally:
        stop.set()
        thread.join(60)
    assert child_wrong == [] and wrong == []
    assert child_host not in (None, parent_host)
    assert probe.pid() == parent_host


def test_a_remote_method_object_refuses_in_a_fork_child(probe: forksafe.ModelProxy) -> None:
    """The host model's own method object (not the proxy's) raises ForkSafeError in a child."""
    raw = probe.__wrapped__.predict  # reached past the proxy
    outcome = fork_call(lambda: raw(np.ones(2)), timeout=30)
    assert isinstance(outcome.error, forksafe.ForkSafeError), outcome
    assert "forked from it" in str(outcome.error)
    np.testing.assert_array_equal(raw(np.ones(2)), np.full(2, 2.0))  # the parent's still works


def test_a_bound_method_of_the_parents_model_in_a_poisoned_child(models: Models) -> None:
    """Taken from a model loaded in the parent: the child refuses (inprocess) or hosts (auto)."""
    result = run_clean(host_scenarios.bound_methods_in_poisoned_child, models, timeout=180).get()
    x_reference = result["reference"]
    assert isinstance(result["inprocess"], forksafe.InheritedRuntimeError), result["inprocess"]
    np.testing.assert_allclose(result["auto"], x_reference, atol=1e-5)
    assert result["auto_in_effect"] == "process"


def test_a_host_answer_that_would_run_code_is_refused(
    probe: forksafe.ModelProxy, tmp_path: Path
) -> None:
    """A model returning an object whose unpickling runs code: HostError; nothing ran here."""
    marker = tmp_path / "ran"
    with pytest.raises(forksafe.HostError, match=r"Gadget.*cannot cross a process boundary"):
        probe.gadget(str(marker))
    assert not marker.exists()
    assert probe.value == 42  # the host survived


def test_exceptions_keep_their_builtin_class_and_never_import_the_hosts(
    probe: forksafe.ModelProxy,
) -> None:
    """Builtin and forksafe errors come back as themselves; others as their builtin base."""
    with pytest.raises(ValueError, match="boom from the host") as builtin:
        probe.boom()
    assert type(builtin.value) is ValueError
    assert "model host process" in "".join(builtin.value.__notes__)
    with pytest.raises(LookupError, match=r"tests\.scenarios\.CustomError: .*custom") as custom:
        probe.custom_error()
    assert type(custom.value) is LookupError
    assert "raise CustomError" in "".join(custom.value.__notes__)  # the host's traceback


def test_torch_tensors_that_require_grad_come_back_as_arrays() -> None:
    """A torch model's output (requires grad) crosses as a numpy array, detached."""
    torch = requires.package("torch")
    proxy = forksafe.lazy_model(host_scenarios.torch_linear, isolation="process", timeout=120)
    x = np.arange(8, dtype="float32").reshape(2, 4)
    out = proxy(torch.from_numpy(x))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, host_scenarios.torch_linear_reference(x), atol=1e-5)
