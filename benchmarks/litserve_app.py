"""The separate model server ``benchmarks.separate_server`` compares a shared host with.

LitServe (``pip install litserve``) with dynamic batching, serving the same
``.keras`` model as ``benchmarks/shared_app.py``: each request's rows go
through ``predict_on_batch`` joined with those of the requests that arrive
within ``FSB_BATCH_TIMEOUT_MS`` (up to ``FSB_MAX_BATCH`` requests), and come
back as logits. Configured from the environment: FSB_MODEL, FSB_PORT,
FSB_MAX_BATCH, FSB_BATCH_TIMEOUT_MS.

    python -m benchmarks.litserve_app
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import litserve as ls
import numpy as np


class DenseAPI(ls.LitAPI):  # type: ignore[misc]
    """Rows in, logits out; a batch of requests runs as one ``predict_on_batch``."""

    def setup(self, device: Any) -> None:
        """Load the model (in LitServe's inference worker)."""
        import keras

        self.model = keras.models.load_model(os.environ["FSB_MODEL"])

    # Unannotated: LitServe reads the request's type from this signature (a dict of JSON).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        """A request's rows as an array."""
        return np.asarray(request["rows"], dtype="float32")

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The requests as they came: they may differ in rows, so ``predict`` joins them."""
        return inputs

    def predict(self, inputs: list[np.ndarray], **kwargs: Any) -> list[np.ndarray]:
        """One ``predict_on_batch`` over every request's rows; the logits cut back per request."""
        rows = [len(x) for x in inputs]
        logits = np.asarray(self.model.predict_on_batch(np.concatenate(inputs)))
        return np.split(logits, np.cumsum(rows)[:-1])

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        """One answer per request."""
        return output

    def encode_response(self, output: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        """The logits as JSON."""
        return {"logits": output.tolist()}


def main() -> None:
    """Serve on 127.0.0.1:FSB_PORT until stopped."""
    api = DenseAPI(
        max_batch_size=int(os.environ.get("FSB_MAX_BATCH", "16")),
        batch_timeout=float(os.environ.get("FSB_BATCH_TIMEOUT_MS", "5")) / 1e3,
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=300)
    server.run(
        host="127.0.0.1",
        port=int(os.environ["FSB_PORT"]),
        num_api_servers=1,
        generate_client_file=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
