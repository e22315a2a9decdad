"""The members' ``p11-kit server`` processes: start, check, signal, stop, and their state.

A member is described by its ``lab.json`` record (:mod:`hacli.lab.state`);
functions here set its ``pid`` and ``start_time`` when they start or stop it,
and the caller saves the state.  Each server runs in its own process group
(``docs/lab.md``, "The processes"), so signals always go to the group.
Every wait is bounded by *timeout* seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacli.errors import LabError
from hacli.lab import procs
from hacli.lab.model import FAILED, HUNG, RUNNING, STOPPED, MemberStatus
from hacli.lab.paths import LabPaths
from hacli.lab.tokens import REQUIRED_MECHANISMS, clean_env, list_tokens
from hacli.lab.tools import LabTools, find_tools


def server_env(paths: LabPaths, index: int) -> dict[str, str]:
    """The environment member *index*'s SoftHSM2 runs in: only here is ``SOFTHSM2_CONF`` set.

    It names the member's own configuration (its own token directory), so its
    SoftHSM2 never opens, scans or locks another member's files.  A clean one
    (:func:`hacli.lab.tokens.clean_env`): a server and the ``p11-kit-remote``
    children it forks never see a PIN variable of the caller (``HACLI_PIN``,
    ``HACLI_SO_PIN``, ...) nor a ``P11_KIT_SERVER_*`` or ``LD_LIBRARY_PATH``
    that would change what they load.
    """
    return clean_env({"SOFTHSM2_CONF": str(paths.softhsm2_conf_of(index))})


def executable(rec: dict[str, Any]) -> str | None:
    """The program the member's server process runs (``/proc/PID/exe``), if readable."""
    pid = rec.get("pid")
    if not pid:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def runs_build(rec: dict[str, Any], tools: LabTools) -> bool:
    """False when the member's live server runs a p11-kit from outside the lab's build.

    A lab started by an older hacli runs the system's ``p11-kit-server``;
    the build's client cannot talk to it.  A process whose executable cannot
    be read is not judged here (True).
    """
    exe = executable(rec)
    if exe is None:
        return True
    prefix = os.path.realpath(tools.p11kit_prefix) + os.sep
    return os.path.realpath(exe).startswith(prefix)


def state_of(paths: LabPaths, rec: dict[str, Any]) -> str:
    """running / failed / hung / stopped, from the process itself.

    The pid must still be *our* server: same start time as recorded and
    the member's URI among its arguments, so a pid reused after a reboot
    is not taken for a live member.  No pid recorded means :func:`stop`
    ended the server on purpose (``down``): stopped, not failed.
    """
    pid = rec.get("pid")
    if not pid:
        return STOPPED
    procs.reap(pid)
    state = procs.proc_state(pid)
    if state is None or state in "ZXx":
        return FAILED
    if procs.proc_start_time(pid) != rec.get("start_time"):
        return FAILED
    cmdline = procs.proc_cmdline(pid)
    # While `p11-kit server` execs p11-kit-server, /proc/<pid>/cmdline is
    # briefly empty; the start time above already rules out a reused pid.
    if cmdline and paths.member_of(rec).uri not in cmdline:
        return FAILED
    return HUNG if state in "Tt" else RUNNING


def has_process(state: str) -> bool:
    """True for the states in which the member's server process exists (running, hung)."""
    return state in (RUNNING, HUNG)


def member_status(paths: LabPaths, rec: dict[str, Any]) -> MemberStatus:
    state = state_of(paths, rec)
    return MemberStatus(
        serial=rec["serial"],
        label=rec["label"],
        state=state,
        pid=rec["pid"] if has_process(state) else None,
        softhsm2_conf=str(paths.softhsm2_conf_of(rec["index"])),
    )


def _own_group(paths: LabPaths, rec: dict[str, Any]) -> int | None:
    """The member's process group id if processes of ours are in it."""
    pgid = rec.get("pid")
    if not pgid:
        return None
    uri = paths.member_of(rec).uri
    if any(uri in procs.proc_cmdline(p) for p in procs.group_pids(pgid)):
        return pgid
    return None


def stop(paths: LabPaths, rec: dict[str, Any], timeout: float) -> None:
    """End every process of a member (server, its connections, leftovers)."""
    pgid = _own_group(paths, rec)
    if pgid is not None:
        procs.stop_group(pgid, grace=min(3.0, timeout))
    # Belt and braces: anything else still serving this token (e.g. a
    # connection child whose group leader was killed long ago).
    uri = paths.member_of(rec).uri
    for pid in procs.pids_with_arg(uri):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    procs.wait_until(lambda: not procs.pids_with_arg(uri), timeout)
    rec["pid"] = None
    rec["start_time"] = None


def _signal(
    rec: dict[str, Any],
    sig: signal.Signals,
    done: Callable[[], bool],
    timeout: float,
    failure: str,
) -> None:
    """Send *sig* to the member's process group; LabError ``label: failure`` unless *done* soon."""
    procs.signal_group(rec["pid"], sig)
    if not procs.wait_until(done, timeout):
        raise LabError(f"{rec['label']}: {failure}")


def kill(rec: dict[str, Any], timeout: float) -> None:
    """SIGKILL a member's process group (``fail``); LabError if anything survives."""
    _signal(
        rec,
        signal.SIGKILL,
        lambda: not procs.group_pids(rec["pid"]),
        timeout,
        "processes survived SIGKILL",
    )


def freeze(paths: LabPaths, rec: dict[str, Any], timeout: float) -> None:
    """SIGSTOP a member's process group (``hang``) and wait until it is stopped."""
    _signal(
        rec,
        signal.SIGSTOP,
        lambda: state_of(paths, rec) == HUNG,
        timeout,
        "did not stop on SIGSTOP",
    )


def resume(paths: LabPaths, rec: dict[str, Any], timeout: float) -> None:
    """SIGCONT a hung member's process group and wait until it runs."""
    _signal(
        rec,
        signal.SIGCONT,
        lambda: state_of(paths, rec) == RUNNING,
        timeout,
        "did not resume on SIGCONT",
    )


def _spawn(paths: LabPaths, rec: dict[str, Any], tools: LabTools, timeout: float) -> None:
    member = paths.member_of(rec)
    mdir = member.socket.parent
    mdir.mkdir(mode=0o700, exist_ok=True)
    stop(paths, rec, timeout)  # leftovers of an earlier server (connections it forked)
    with contextlib.suppress(FileNotFoundError):
        member.socket.unlink()  # a killed server leaves its socket file behind
    cmd = [
        tools.p11kit,
        "server",
        "--foreground",  # the pid we hold is the server itself
        "--provider",
        tools.softhsm2,
        "--name",
        str(member.socket),
        member.uri,  # export this member's token only
    ]
    with open(mdir / "server.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=mdir,
            env=server_env(paths, member.index),
            # own session => own process group: fail/hang/restore signal
            # the group, which holds the p11-kit-remote children too.
            start_new_session=True,
        )
    procs.adopt(proc)
    rec["pid"] = proc.pid
    rec["start_time"] = procs.proc_start_time(proc.pid)


def _connectable(path: Path) -> bool:
    """True when a server accepts connections on the unix socket *path*."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
    except OSError:
        return False
    finally:
        s.close()
    return True


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # the server prints shell assignments on start; skip them
    lines = [ln for ln in lines if not ln.startswith("P11_KIT_SERVER_")]
    return lines[-1] if lines else ""


def verify(
    paths: LabPaths, recs: list[dict[str, Any]], timeout: float, client: str | None = None
) -> None:
    """Each server must serve exactly its own token, with every required mechanism.

    Both as a client sees them through *client* (default: the lab's build of
    ``p11-kit-client.so``), in one probe child.  The mechanism check is what
    catches a client that cannot forward AES key wrap (the system's 0.24.1,
    or the build's client linked against it): LabError naming the member,
    the client and the mechanisms it drops.
    """
    library = client or find_tools().p11kit_client
    members = [paths.member_of(rec) for rec in recs]
    wanted = list(REQUIRED_MECHANISMS.values())
    seen_all = list_tokens(members, timeout, client=library, mechanisms=wanted)
    for member, seen in zip(members, seen_all, strict=True):
        tokens = [{"label": t["label"], "serial": t["serial"]} for t in seen]
        if tokens != [{"label": member.label, "serial": member.serial}]:
            shown = ", ".join(f"{t['label']}/{t['serial']}" for t in tokens) or "no token"
            raise LabError(
                f"{member.socket} serves {shown}, expected only {member.label}/{member.serial}"
            )
        missing = seen[0]["missing"]
        if missing:
            names = [n for n, m in REQUIRED_MECHANISMS.items() if m in missing]
            raise LabError(
                f"{member.label}: the p11-kit client at {library} does not forward "
                f"{' or '.join(names)}; the lab needs its own p11-kit build, not the "
                "system's (is the build linked against the system library? rebuild it "
                "with `make install` or packaging/p11-kit/build.sh PREFIX)"
            )


def start(paths: LabPaths, recs: list[dict[str, Any]], tools: LabTools, timeout: float) -> None:
    """Start the servers of *recs*, wait until they accept, check what they serve.

    Readiness is polled, never slept for.  On any failure every server of
    *recs* is stopped again before the error goes on.
    """
    try:
        for rec in recs:
            _spawn(paths, rec, tools, timeout)
        pending = list(recs)

        def ready() -> bool:
            for rec in list(pending):
                if state_of(paths, rec) == FAILED:
                    log = _log_tail(paths.member_dir(rec["index"]) / "server.log")
                    raise LabError(
                        f"p11-kit server of {rec['label']} exited" + (f": {log}" if log else "")
                    )
                if _connectable(paths.member_of(rec).socket):
                    pending.remove(rec)
            return not pending

        if not procs.wait_until(ready, timeout):
            names = ", ".join(r["label"] for r in pending)
            raise LabError(f"p11-kit server of {names} not ready within {timeout:g} s")
        verify(paths, recs, timeout, tools.p11kit_client)
    except BaseException:
        for rec in recs:
            stop(paths, rec, timeout)
        raise
