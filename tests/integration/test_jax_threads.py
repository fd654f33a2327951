"""Keras on JAX from threads: the proxy serializes calls where the backend cannot take them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.models import Models
from tests.support import requires
from tests.support.children import run_python

pytestmark = pytest.mark.timeout(300)

THREADS_SCRIPT = """
    import inspect, json, threading
    import numpy as np
    import keras
    import forksafe

    x = np.load({reference!r})["x"]
    proxy = forksafe.load_model({path!r})

    def hammer(call, threads=32):
        barrier = threading.Barrier(threads)
        answers, errors = [], []

        def work():
            try:
                barrier.wait(30)
                answers.append(np.asarray(call()).tolist())
            except Exception as exc:
                errors.append(type(exc).__name__ + ": " + str(exc)[:200])

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        return {{"answers": answers, "errors": errors}}

    out = {{
        "backend": forksafe.info(proxy).backend if proxy(x) is not None else None,
        "call": hammer(lambda: proxy(x)),
        "predict_on_batch": hammer(lambda: proxy.predict_on_batch(x)),
        "predict": hammer(lambda: proxy.predict(x, verbose=0)),
        "signature": str(inspect.signature(proxy.predict)),
        "bare_signature": str(inspect.signature(proxy.__wrapped__.predict)),
    }}
    print(json.dumps(out))
"""


def _jax() -> None:
    requires.package("jax")


def test_keras_jax_model_answers_every_thread(models: Models) -> None:
    """32 threads at once on one Keras-JAX proxy: __call__, predict_on_batch, predict all answer.

    The bare model answers only a few of them (``Array has been deleted``);
    the proxy serializes calls for this backend, and its methods keep
    their signatures.
    """
    _jax()
    _, reference = models.reference()
    script = THREADS_SCRIPT.format(reference=models.path("reference.npz"), path=models.keras)
    out = json.loads(run_python(script, timeout=240, KERAS_BACKEND="jax").splitlines()[-1])
    assert out["backend"] == "jax"
    for how in ("call", "predict_on_batch", "predict"):
        assert out[how]["errors"] == [], how
        assert len(out[how]["answers"]) == 32, how
        for answer in out[how]["answers"]:
            np.testing.assert_allclose(np.asarray(answer), reference, atol=1e-5)
    assert out["signature"] == out["bare_signature"]
