"""The forksafe command: demo (the original Celery report, live), doctor MODULE, hosts."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from forksafe import testing
from forksafe._frameworks import display

_MODEL_TYPES = (("keras", "Model"), ("tf_keras", "Model"), ("torch.nn", "Module"))


def demo_transport_options(folder: str) -> dict[str, Any]:
    """The demo's filesystem broker, for its worker and its client: all of it in ``folder``."""
    return {
        "data_folder_in": folder,
        "data_folder_out": folder,
        # kombu's default is ./control, in the user's current directory.
        "control_folder": os.path.join(folder, "control"),
        "store_processed": False,
    }


def _bare_models(module: str, attribute: str | None) -> list[tuple[str, str]]:
    """Module-level (or ``attribute``) objects that are models held outside a proxy."""
    import forksafe

    namespace = vars(importlib.import_module(module))
    if attribute is not None:
        namespace = {attribute: namespace[attribute]}
    kinds = []
    for package, name in _MODEL_TYPES:
        loaded = sys.modules.get(package)
        if loaded is not None and hasattr(loaded, name):
            kinds.append(getattr(loaded, name))
    found = []
    for key, value in namespace.items():
        if isinstance(value, forksafe.ModelProxy) or type(value) is type:
            continue
        if kinds and isinstance(value, tuple(kinds)):
            found.append((key, f"{type(value).__module__}.{type(value).__qualname__}"))
    return found


def _how_built(module: str, name: str) -> str:
    """``"file"`` if the module sets ``name`` from a ``load_model(...)`` call, else ``"code"``.

    Read from the module's source: ``NAME = model_from_json(...)`` followed by
    ``NAME.load_weights(...)``, a constructor or any other code is ``"code"``,
    which ``forksafe.lazy_model(factory)`` reproduces per process and
    ``forksafe.load_model(path)`` cannot.
    """
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        with open(str(path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return "file"  # no source to read: the plain suggestion
    loaded, changed = False, False
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                loaded = _callee(node.value) == "load_model"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (
                isinstance(owner, ast.Name)
                and owner.id == name
                and node.func.attr.startswith(("load_weights", "set_weights", "compile", "build"))
            ):
                changed = True
    return "file" if loaded and not changed else "code"


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _probe(target: str) -> dict[str, Any]:
    """In a fresh interpreter: what importing ``target`` started and holds."""
    module, _, attribute = target.partition(":")
    try:
        report = testing.import_report(module)
    except BaseException as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if attribute and not hasattr(sys.modules[module], attribute):
        return {"error": f"module {module!r} has no attribute {attribute!r}"}
    report["bare"] = [
        (name, kind, _how_built(module, name))
        for name, kind in _bare_models(module, attribute or None)
    ]
    return report


def doctor(target: str, timeout: float) -> int:
    """Print what importing ``target`` does to forked workers; 1 if that is a problem."""
    print(f"forksafe doctor: importing {target} in a fresh interpreter ...", flush=True)
    # As with ``python -m``: the console script's sys.path lacks the current
    # directory, where the user's worker module usually is.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        report = testing.run_in_subprocess(_probe, target, timeout=timeout)
    except testing.ForkTimeoutError as exc:
        print(f"  PROBLEM: importing {target} did not finish within {timeout} s\n{exc.stacks}")
        return 1
    if "error" in report:
        print(f"  PROBLEM: cannot import {target}: {report['error']}")
        return 1
    problems = 0
    for name, where in report["started"]:
        problems += 1
        print(
            f"  PROBLEM: importing it started the {display(name)} runtime "
            f"(at {where or 'an unknown line'}); every worker forked from a process that "
            "imports it (Celery prefork, gunicorn --preload, multiprocessing 'fork') will "
            "hang on its first prediction or need a model host."
        )
    for name, kind, built in report["bare"]:
        problems += 1
        if built == "file":
            fix = f"use {name} = forksafe.load_model(path) so each worker loads its own."
        else:
            fix = (
                "it is built by code (from JSON and weights, or constructed): move that code "
                f"into a module-level function, say build_model(), and use {name} = "
                "forksafe.lazy_model(build_model) so each worker builds its own."
            )
        print(f"  PROBLEM: {name} is a model loaded outside a proxy ({kind}); {fix}")
    if problems:
        return 1
    print("  OK: importing it started no framework runtime and holds no bare model.")
    return 0


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # None in sys.modules, or a broken parent package
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
            process.wait(10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_ready(log: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, encoding="utf-8", errors="replace") as f:
            if "ready." in f.read():
                return
        if process.poll() is not None:
            break
        time.sleep(0.2)
    with open(log, encoding="utf-8", errors="replace") as f:
        raise SystemExit(f"the Celery worker did not start:\n{f.read()[-3000:]}")


def demo(broker: str | None, workers: int, tasks: int, naive: bool, timeout: float) -> int:
    """The original report, live: a real Celery prefork worker answering predictions."""
    missing = [name for name in ("celery", "keras", "tensorflow") if not _importable(name)]
    if missing:
        raise SystemExit(
            f"forksafe demo needs {', '.join(missing)}, which is not installed: "
            "pip install 'forksafe[demo]' (Celery, Keras and TensorFlow)"
        )
    from celery import Celery

    with tempfile.TemporaryDirectory(prefix="forksafe-demo-") as directory:
        print("1/4 building a small Keras model (in a subprocess) ...", flush=True)
        tiny = testing.run_in_subprocess(testing.save_tiny_model, directory, timeout=180)
        folder = os.path.join(directory, "broker")
        os.makedirs(folder)
        os.makedirs(os.path.join(directory, "results"))
        env = {
            **os.environ,
            "FORKSAFE_DEMO_MODEL": tiny.path,
            "FORKSAFE_DEMO_FOLDER": folder,
            "FORKSAFE_DEMO_NAIVE": "1" if naive else "0",
            "FORKSAFE_DEMO_BROKER": broker or "filesystem://",
            "FORKSAFE_DEMO_BACKEND": (
                broker
                if broker and broker.startswith("redis")
                else "rpc://"
                if broker
                else f"file://{os.path.join(directory, 'results')}"
            ),
        }
        pattern = (
            "the original report: MODEL = keras.models.load_model(...) at import"
            if naive
            else "the fix: MODEL = forksafe.load_model(...) at import"
        )
        print(
            f"2/4 starting a Celery prefork worker ({workers} processes, "
            f"broker {env['FORKSAFE_DEMO_BROKER']}) with {pattern} ...",
            flush=True,
        )
        log = os.path.join(directory, "worker.log")
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "forksafe._demo_app",
                    "worker",
                    "-P",
                    "prefork",
                    "-c",
                    str(workers),
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel=INFO",
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_ready(log, process, 120)
            app = Celery(
                "forksafe_demo_client",
                broker=env["FORKSAFE_DEMO_BROKER"],
                backend=env["FORKSAFE_DEMO_BACKEND"],
            )
            if env["FORKSAFE_DEMO_BROKER"].startswith("filesystem"):
                app.conf.broker_transport_options = demo_transport_options(folder)
            print(f"3/4 sending {tasks} prediction tasks ...", flush=True)
            rows = tiny.x.tolist()
            pending = [app.send_task("forksafe_demo.predict", args=[rows]) for _ in range(tasks)]
            answers = []
            deadline = time.monotonic() + timeout
            for index, result in enumerate(pending, 1):
                try:
                    answers.append(result.get(timeout=max(deadline - time.monotonic(), 0.1)))
                except Exception as exc:  # celery raises its own TimeoutError
                    print(
                        f"    task {index}: no answer within {timeout} s ({type(exc).__name__})"
                        " -- the prefork child hangs on its first predict, as in the report."
                    )
                    break
                print(f"    {index}/{tasks} answered", flush=True)
            app.close()
        finally:
            _stop(process)
    print("4/4 results")
    _table(answers, tasks)
    return 0


def _table(answers: list[dict[str, Any]], tasks: int) -> None:
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for answer in answers:
        by_pid[answer["pid"]].append(answer)
    print(
        f"    {'worker pid':>10} {'loads':>6} {'tasks':>6} {'first ms':>9} {'then median ms':>15}"
    )
    for pid, rows in sorted(by_pid.items()):
        ms = [row["ms"] for row in rows]
        loads = rows[-1]["loads"]
        rest = f"{statistics.median(ms[1:]):.2f}" if len(ms) > 1 else "-"
        print(
            f"    {pid:>10} {loads if loads is not None else '-':>6} {len(rows):>6} "
            f"{ms[0]:>9.1f} {rest:>15}"
        )
    print("    (a worker's first task includes loading the model in that worker)")
    print(f"    answered {len(answers)} of {tasks} tasks")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``forksafe`` and ``python -m forksafe``."""
    parser = argparse.ArgumentParser(prog="forksafe", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="run the original Celery report end to end")
    run.add_argument(
        "--broker", default=None, help="broker URL (default: a filesystem broker in a temp dir)"
    )
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--tasks", type=int, default=8)
    run.add_argument(
        "--naive",
        action="store_true",
        help="load the model at import, as the report did, and watch it hang",
    )
    run.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for the answers (default 20)"
    )
    check = commands.add_parser("doctor", help="does importing MODULE break forked workers?")
    check.add_argument("target", metavar="MODULE[:ATTR]")
    check.add_argument("--timeout", type=float, default=120.0)
    hosts = commands.add_parser("hosts", help="list this user's shared model hosts, or stop them")
    hosts.add_argument("action", nargs="?", choices=["stop"], help="stop the hosts named")
    hosts.add_argument("pids", nargs="*", type=int, metavar="PID")
    hosts.add_argument("--all", action="store_true", help="with stop: every shared host")
    hosts.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor(args.target, args.timeout)
    if args.command == "hosts":
        from forksafe import _hosts

        return _hosts.main(args.action, args.pids, args.all, args.json)
    if args.workers < 1 or args.tasks < 1:
        parser.error("--workers and --tasks must be at least 1")
    return demo(args.broker, args.workers, args.tasks, args.naive, args.timeout)
