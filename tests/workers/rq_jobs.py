"""The RQ job module: one module-level proxy (see ``served``) and a job that predicts."""

from __future__ import annotations

from typing import Any

from tests.workers.served import MODEL, answer

__all__ = ["MODEL", "predict"]


def predict(rows: list[list[float]]) -> dict[str, Any]:
    """An RQ job: predict ``rows`` in whichever process runs it."""
    return answer(rows)
