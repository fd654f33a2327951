"""What ``forksafe doctor`` says about the server or queue that runs the module it inspects.

Runs in the doctor's fresh interpreter, right after the module was imported:
it looks at what that import brought in (``sys.modules``), at the module's
own objects (a Celery app's settings, a gunicorn setting), and at a uWSGI or
gunicorn config file beside the module or in the current directory. It
imports nothing itself, and each finding is advice (the guide's, in short),
never a problem.
"""

from __future__ import annotations

import ast
import configparser
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Advice", "recognise"]


@dataclass(frozen=True)
class Advice:
    """One server or queue recognised, what to do under it, and its guide."""

    server: str
    text: str
    guide: str
    fork_per_job: bool = False


_FORK_PER_JOB = (
    "each job's child imports the framework and loads the model again (forksafe warns "
    "after 5 such loads in a minute); create the proxy with isolation='shared' so one host "
    "loads it once for every child"
)


def _rq(_: dict[str, Any], __: list[str]) -> Advice | None:
    if "rq" not in sys.modules:
        return None
    return Advice(
        "RQ",
        "a worker forks a work horse per job, so " + _FORK_PER_JOB + "; preload this module "
        "in the worker (a worker script that imports it, as RQ advises), or run SimpleWorker "
        "(jobs in the worker itself, one load). Keep job_timeout above a first load.",
        "rq.md",
        fork_per_job=True,
    )


def _celery(namespace: dict[str, Any], _: list[str]) -> Advice | None:
    celery = sys.modules.get("celery")
    if celery is None:
        return None
    for value in namespace.values():
        if isinstance(value, celery.Celery) and value.conf.worker_max_tasks_per_child == 1:
            return Advice(
                "Celery (worker_max_tasks_per_child = 1)",
                "every task runs in a newly forked child, so " + _FORK_PER_JOB + "; or let "
                "each child run more tasks.",
                "recycling.md",
                fork_per_job=True,
            )
    return None


def _gunicorn(namespace: dict[str, Any], folders: list[str]) -> Advice | None:
    limit = namespace.get("max_requests")
    if not isinstance(limit, int) or isinstance(limit, bool):
        limit = _config_number(folders, "gunicorn.conf.py", "max_requests")
    if not limit:
        return None
    return Advice(
        f"gunicorn (max_requests = {limit})",
        f"each worker is replaced after {limit} requests and its replacement loads the model "
        "again, on its first request or in post_fork with forksafe.gunicorn.warm(MODEL); "
        "with isolation='shared' the replacements use the one host already loaded. HUP "
        "replaces every worker the same way.",
        "recycling.md",
        fork_per_job=limit == 1,
    )


def _uwsgi(_: dict[str, Any], folders: list[str]) -> Advice | None:
    options = _uwsgi_ini(folders)
    if options is None and not {"uwsgi", "uwsgidecorators"} & set(sys.modules):
        return None
    options = options or {}
    if _truthy(options.get("lazy-apps")) or _truthy(options.get("lazy")):
        start = "lazy-apps: each worker imports the app itself, so the master stays clean"
    else:
        start = (
            "the master imports the app and forks the workers from it (lazy-apps is off): "
            "keep the model behind the proxy so the master loads nothing"
        )
    return Advice(
        "uWSGI",
        f"{start}. Workers are forked without Python's fork hooks (forksafe checks the pid "
        "instead); enable-threads lets a warm-up or host thread run between requests; set "
        "harakiri above the time of a first request, which loads the model.",
        "uwsgi.md",
    )


def _dramatiq(_: dict[str, Any], __: list[str]) -> Advice | None:
    if "dramatiq" not in sys.modules:
        return None
    return Advice(
        "dramatiq",
        "each worker process imports this module after the fork (the main process never "
        "does) and runs actors in threads sharing one load: --processes N means N loads, or "
        "one with isolation='shared'.",
        "dramatiq.md",
    )


def _huey(_: dict[str, Any], __: list[str]) -> Advice | None:
    if "huey" not in sys.modules:
        return None
    return Advice(
        "huey",
        "huey_consumer imports this module, then forks its -k process workers from it: "
        "each loads on its first task (a model loaded at import would hang them); -k thread "
        "and -k greenlet load once, in the consumer.",
        "huey.md",
    )


def _asgi(_: dict[str, Any], __: list[str]) -> Advice | None:
    if not {"fastapi", "starlette"} & set(sys.modules):
        return None
    return Advice(
        "FastAPI/Starlette",
        "call the model from a plain def endpoint or through run_in_threadpool in an async "
        "one (a predict on the event loop stalls every request). Under gunicorn use "
        "-k uvicorn_worker.UvicornWorker; with --preload the master loads nothing.",
        "fastapi.md",
    )


_RECOGNISERS: tuple[Callable[[dict[str, Any], list[str]], Advice | None], ...] = (
    _rq,
    _celery,
    _gunicorn,
    _uwsgi,
    _dramatiq,
    _huey,
    _asgi,
)


def recognise(module: str) -> list[Advice]:
    """The servers and queues that the imported ``module`` is run by, with their advice."""
    loaded = sys.modules[module]
    path = getattr(loaded, "__file__", None)
    folders = [os.getcwd()]
    if path:
        folders.insert(0, os.path.dirname(os.path.abspath(path)))
    namespace = vars(loaded)
    found = (check(namespace, folders) for check in _RECOGNISERS)
    return [advice for advice in found if advice is not None]


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("", "1", "true", "yes", "on")


def _uwsgi_ini(folders: list[str]) -> dict[str, str] | None:
    """The ``[uwsgi]`` options of a ``uwsgi.ini`` or ``app.ini`` beside the module, if any."""
    for folder in folders:
        for name in ("uwsgi.ini", "app.ini"):
            parser = configparser.ConfigParser(allow_no_value=True, strict=False)
            try:
                parser.read(os.path.join(folder, name), encoding="utf-8")
            except (configparser.Error, UnicodeDecodeError):
                continue
            if parser.has_section("uwsgi"):
                return {k: v or "" for k, v in parser.items("uwsgi", raw=True)}
    return None


def _config_number(folders: list[str], name: str, setting: str) -> int | None:
    """``setting = <int>`` in the config file ``name`` beside the module, read, not run."""
    for folder in folders:
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == setting for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int)
            ):
                return node.value.value
    return None
