"""What the server and queue tests share: ports, HTTP posts, answers checked by value, Redis.

Each test gets its own port (bound to 0 first), its own queue names and key
prefixes (a uuid), and removes its Redis keys at the end, so tests can run in
parallel (pytest-xdist) and beside other runs on the same Redis.
"""

from __future__ import annotations

import json
import socket
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["check_answers", "free_port", "post_rows", "redis_names", "unique"]


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post_rows(port: int, rows: list[list[float]], path: str = "/predict") -> dict[str, Any]:
    """POST ``{"rows": rows}`` to ``path`` on 127.0.0.1, bounded; the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps({"rows": rows}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def check_answers(
    answers: list[dict[str, Any]], reference: np.ndarray, in_effect: str
) -> Counter[int]:
    """Every answer equals ``reference``, ran ``in_effect``, loaded once; answers per pid."""
    assert answers, "no answers"
    for answer in answers:
        np.testing.assert_allclose(np.asarray(answer["y"]), reference, atol=1e-5)
        assert answer["in_effect"] == in_effect, answer
        assert answer["loads"] == 1, answer  # this process loaded (or connected) once
    return Counter(answer["pid"] for answer in answers)


def unique(prefix: str) -> str:
    """A name no other test or run uses (queues, key prefixes)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextmanager
def redis_names(url: str, prefix: str) -> Iterator[str]:
    """A unique name for this test's queue; every Redis key holding it is deleted after."""
    import redis

    name = unique(prefix)
    try:
        yield name
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = list(client.scan_iter(match=f"*{name}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
