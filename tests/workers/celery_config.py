"""Broker and backend settings shared by the test worker and the test client."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery


def configure(app: Celery, env: Any) -> Celery:
    """Point ``app`` at the broker and backend named in ``env``."""
    broker = env.get("FS_BROKER", "filesystem://")
    app.conf.update(
        broker_url=broker,
        result_backend=env.get("FS_BACKEND"),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    if broker.startswith("filesystem"):
        folder = env["FS_FS_DIR"]
        app.conf.broker_transport_options = {
            "data_folder_in": folder,
            "data_folder_out": folder,
            "processed_folder": os.path.join(folder, "processed"),
            # kombu's default is ./control, in whatever directory the worker runs.
            "control_folder": os.path.join(folder, "control"),
            "store_processed": False,
        }
    return app


def close_client(app: Celery) -> None:
    """Close a test client completely, its result consumer's connection included.

    ``app.close()`` leaves the rpc:// (and Redis pub/sub) result consumer's
    connection to the garbage collector, which would report it in a later test.
    """
    consumer = getattr(app.backend, "result_consumer", None)
    started = getattr(consumer, "_consumer", None) or getattr(consumer, "_pubsub", None)
    if consumer is not None and started is not None:
        consumer.stop()
    app.close()
