"""Process helpers for the lab: /proc inspection and process-group signals.

Every member server runs in its own process group (it is started with
``start_new_session=True``), and ``p11-kit server`` forks a ``p11-kit-remote``
child per client connection into that group.  So the lab always signals the
*group*, and "is anything of this member left?" means "is any live process in
this group?".  Linux only (reads ``/proc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (index 0 = state), or None.

    The command name (field 2) is in parentheses and may itself contain spaces
    or parentheses, so split after the *last* ``)``.
    """
    try:
        data = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return data[data.rfind(")") + 2 :].split()


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (``R``, ``S``, ``T``, ``Z`` ...) or None if gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (``stat`` field 22), or None.

    Stored next to a pid so that a pid reused by an unrelated process (after a
    reboot, or after a long time) is not mistaken for a lab server.
    """
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def proc_cmdline(pid: int) -> list[str]:
    """The argument vector of a process, or [] if it is gone."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


#: Servers this process started, by pid: polling the Popen object reaps a dead
#: one (no zombie in a long-lived caller such as a test run) and keeps Python
#: from warning that a still-running child was garbage-collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def adopt(proc: subprocess.Popen[bytes]) -> None:
    """Remember a started server so that :func:`reap` can collect it."""
    _CHILDREN[proc.pid] = proc


def reap(pid: int) -> None:
    """Collect a dead child so it does not linger as a zombie (no-op for non-children)."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def group_pids(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes whose process group is *pgid*."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields: 0 state, 1 ppid, 2 pgrp
        if fields and int(fields[2]) == pgid:
            if fields[0] == "Z":
                reap(int(entry.name))
                continue
            found.append(int(entry.name))
    return found


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send *sig* to a process group; False if the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll *condition* until it is true or *timeout* seconds passed; its last value.

    The polling interval grows from *interval* to 0.1 s so that a quick
    condition is noticed quickly without spinning on a slow one.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return condition()
        time.sleep(interval)
        interval = min(interval * 2, 0.1)


def stop_group(pgid: int, grace: float = 3.0) -> None:
    """End every process of a group: SIGCONT, SIGTERM, then SIGKILL after *grace* s.

    SIGCONT comes first because a stopped (hung) process does not act on
    SIGTERM until it runs again.  Returns once no live process is left in
    the group (SIGKILL cannot be ignored, so this is bounded).
    """
    reap(pgid)
    if not group_pids(pgid):
        return
    signal_group(pgid, signal.SIGCONT)
    signal_group(pgid, signal.SIGTERM)
    if wait_until(lambda: _gone(pgid), grace):
        return
    signal_group(pgid, signal.SIGKILL)
    wait_until(lambda: _gone(pgid), 5.0)


def _gone(pgid: int) -> bool:
    reap(pgid)
    return not group_pids(pgid)


def pids_with_arg(arg: str) -> list[int]:
    """Pids of live processes with *arg* as one of their arguments."""
    found = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and arg in proc_cmdline(int(entry.name)):
            state = proc_state(int(entry.name))
            if state is not None and state != "Z":
                found.append(int(entry.name))
    return found
