"""``forksafe hosts``: the operator's view of this user's shared hosts, and stopping them.

Every shared host listens in this user's runtime directory; each is asked
for its figures over a short connection of its own (never counted as a
client, never waiting for the model). Stopping sends SIGTERM, after which a
host removes its socket and start lock and exits; clients then see it gone,
as after a crash, and their next call starts a host of the model they find.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from typing import Any

from forksafe._host.client_shared import ask_stats
from forksafe._host.runtime_dir import runtime_dir

__all__ = ["list_hosts", "main", "stop_hosts"]

_STOP_SECONDS = 10.0


def list_hosts() -> list[dict[str, Any]]:
    """The figures of every shared host of this user that answers, by pid."""
    directory = runtime_dir()
    found = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".sock"):
            stats = ask_stats(os.path.join(directory, name))
            if stats is not None:
                found.append(stats)
    return sorted(found, key=lambda s: int(s["pid"]))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def stop_hosts(pids: list[int] | None) -> tuple[list[int], list[str]]:
    """Stop the shared hosts with these pids (``None``: all); (stopped, problems)."""
    live = {int(h["pid"]) for h in list_hosts()}
    chosen = sorted(live) if pids is None else pids
    problems = [
        f"{pid} is not a shared model host of this user" for pid in chosen if pid not in live
    ]
    asked = [pid for pid in chosen if pid in live]
    for pid in asked:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_SECONDS
    while time.monotonic() < deadline and not all(_gone(pid) for pid in asked):
        time.sleep(0.05)
    problems += [
        f"{pid} did not exit within {_STOP_SECONDS:.0f} s" for pid in asked if not _gone(pid)
    ]
    return [pid for pid in asked if _gone(pid)], problems


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(hosts: list[dict[str, Any]]) -> str:
    if not hosts:
        return f"no shared model hosts of this user in {runtime_dir()}"
    lines = [
        f"{'PID':>7}  {'STATE':8} {'CLIENTS':>7} {'CALLS':>7} {'BATCHES':>7} {'ROWS/B':>6} "
        f"{'WAIT p50/p99 ms':>15} {'UPTIME':>7} {'PSS MB':>7}  SOURCE"
    ]
    for h in hosts:
        wait = "-"
        if h.get("queue_wait_p50_ms") is not None:
            wait = f"{h['queue_wait_p50_ms']:.1f}/{h['queue_wait_p99_ms']:.1f}"
        rows = h.get("mean_rows_per_batch")
        pss = h.get("pss_kb")
        lines.append(
            f"{h['pid']:>7}  {h['state']:8} {h['clients']:>7} {h['calls']:>7} {h['batches']:>7} "
            f"{rows if rows is not None else '-':>6} {wait:>15} {_duration(h['uptime_s']):>7} "
            f"{pss / 1024 if pss else 0:>7.1f}  {h['source']}"
        )
        env = " ".join(f"{k}={v}" for k, v in sorted(h.get("environment", {}).items()))
        lines.append(f"{'':>9}log {h['log']}  python {h['python']}  {env}".rstrip())
    return "\n".join(lines)


def main(command: str | None, pids: list[int], every: bool, as_json: bool) -> int:
    """``forksafe hosts [--json]`` and ``forksafe hosts stop PID...|--all``."""
    if command is None:
        hosts = list_hosts()
        print(json.dumps(hosts, indent=2) if as_json else _table(hosts))
        return 0
    if not pids and not every:
        print("forksafe hosts stop: name the host pids to stop, or --all")
        return 2
    stopped, problems = stop_hosts(None if every else pids)
    for pid in stopped:
        print(f"stopped shared model host {pid}")
    for problem in problems:
        print(f"forksafe hosts stop: {problem}")
    return 1 if problems else 0
