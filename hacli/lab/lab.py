"""The lab: member HSMs as separate processes.

Each member is a SoftHSM2 token served by its own ``p11-kit server`` process,
in its own process group, on a unix socket in the lab directory.  A member can
be crashed (SIGKILL), frozen (SIGSTOP) and restored independently, so failover
and recovery can be watched on one machine.  See ``docs/lab.md``.

This module has no click or rich imports; ``hacli lab ...`` is a thin layer
over :class:`Lab`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hacli.errors import LabError, UsageError
from hacli.lab import probe, procs
from hacli.lab.tools import LabTools, find_tools

#: Label of the lab's HA group in its Chrystoki.conf.
GROUP_LABEL = "labgroup"
#: Members a new lab gets when the caller does not say.
DEFAULT_MEMBERS = 2
MAX_MEMBERS = 16

RUNNING = "running"
FAILED = "failed"
HUNG = "hung"

STATE_VERSION = 1
SOCKET_NAME = "p11kit.sock"
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_UNIX_PATH_MAX = 107
#: Characters that would break a value in Chrystoki.conf (``;`` ends a value,
#: ``,`` separates ``MemberNNEnvironment`` entries, ``#`` starts a comment).
_BAD_PATH_CHARS = set(";,#{}\n\r\t")


class LabUsageError(LabError, UsageError):
    """A request the lab cannot take (unknown member, bad count): nothing changed.

    Both a :class:`LabError` and a :class:`UsageError`, so the CLI exits 2.
    """


@dataclass(frozen=True)
class LabMember:
    """One member as configured: where a PKCS#11 client reaches it."""

    index: int
    label: str
    serial: str
    socket: Path

    @property
    def address(self) -> str:
        """The value of ``P11_KIT_SERVER_ADDRESS`` for this member."""
        return f"unix:path={self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment a copy of ``p11-kit-client.so`` must be *loaded* with."""
        return {"P11_KIT_SERVER_ADDRESS": self.address}

    @property
    def uri(self) -> str:
        """The PKCS#11 URI the member's server exports (its token, nothing else)."""
        return f"pkcs11:token={self.label};serial={self.serial}"


@dataclass(frozen=True)
class MemberStatus:
    """A member's state, derived from its process (not from lab.json)."""

    serial: str
    label: str
    #: ``running``, ``failed`` (no server process) or ``hung`` (stopped).
    state: str
    #: Pid of the member's ``p11-kit server`` (its process group id), None if gone.
    pid: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "label": self.label, "state": self.state, "pid": self.pid}


@dataclass(frozen=True)
class LabStatus:
    """What ``hacli lab status --json`` prints (:meth:`as_dict` is that contract)."""

    dir: str
    conf: str
    group: str
    softhsm2_conf: str
    pin_file: str
    members: tuple[MemberStatus, ...]
    #: The group's serial (``1`` + the first member's serial); not in the JSON.
    group_serial: str = ""
    #: Serials of members this call started, restarted or resumed (``up``);
    #: empty when the lab was already up.  Not in the JSON.
    started: tuple[str, ...] = ()
    #: True when this call created the lab (``up`` on an empty directory).
    created: bool = False

    @property
    def all_running(self) -> bool:
        return all(m.state == RUNNING for m in self.members)

    def member(self, which: str) -> MemberStatus:
        """The member with this serial or label; KeyError if none."""
        for m in self.members:
            if which == m.serial or which.lower() == m.label.lower():
                return m
        raise KeyError(which)

    def as_dict(self) -> dict[str, Any]:
        """Exactly the fields of the ``hacli lab status --json`` contract."""
        return {
            "dir": self.dir,
            "conf": self.conf,
            "group": self.group,
            "softhsm2_conf": self.softhsm2_conf,
            "pin_file": self.pin_file,
            "members": [m.as_dict() for m in self.members],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.as_dict(), indent=indent)


# --------------------------------------------------------------------------
# file templates

SOFTHSM2_CONF_TEMPLATE = """\
# SoftHSM2 configuration of the hacli lab in {dir}
# (written by `hacli lab up`; see docs/lab.md).
# Every member's token lives in the token directory below; each member's
# `p11-kit server` exports only its own token.  To open the tokens directly:
#   SOFTHSM2_CONF={path} pkcs11-tool --module {module} -L
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""

CHRYSTOKI_TEMPLATE = """\
# Chrystoki.conf of the hacli lab in {dir}
# Written once by `hacli lab up` (a later `up` keeps your edits).  The members
# are SoftHSM2 tokens, each served by its own `p11-kit server` process, so each
# can be crashed, frozen and restored: `hacli lab fail|hang|restore SERIAL`.
# Values marked "lab" are shorter than production defaults so that failover
# and recovery are quick to watch.  The user PIN is in {pin_file}, never here.

LunaSA Client = {{
   # lab: a frozen member costs 3 s per call; the production default is 20000.
   ReceiveTimeout = 3000;
}}

VirtualToken = {{
   VirtualToken00Label = {group};
   VirtualToken00SN = {group_serial};
   VirtualToken00Members = {member_list};
   VirtualTokenActiveRecovery = activeBasic;
}}

HASynchronize = {{
   {group} = 1;
}}

HAConfiguration = {{
   # lab: retry a failed member every 5 s; Luna clients need at least 60.
   AutoReconnectInterval = 5;
   # -1: retry forever.
   reconnAtt = -1;
   haLogStatus = enabled;
   haLogPath = {log_dir};
   logLen = 1000000;
}}

# hacli's own section: where each member's PKCS#11 module is.  Each member is
# reached through its own copy of p11-kit's client module, loaded with the
# address of that member's server socket.
hacli = {{
{member_lines}   LabDir = {dir};
   # lab: p11-kit 0.24's RPC forwards no AES key-wrap mechanism, so members
   # cannot wrap keys under the transport key; lab keys are test keys, so they
   # may be replicated by value (in the clear, through this host's memory).
   # Never set this for keys that matter.
   ReplicateByValue = 1;
}}
"""


def _chrystoki_text(lab: Lab, members: list[LabMember], client: str) -> str:
    lines = []
    for m in members:
        nn = f"{m.index:02d}"
        lines.append(f"   Member{nn}Serial = {m.serial};\n")
        lines.append(f"   Member{nn}Library = {client};\n")
        lines.append(f"   Member{nn}Environment = P11_KIT_SERVER_ADDRESS={m.address};\n")
    return CHRYSTOKI_TEMPLATE.format(
        dir=lab.directory,
        pin_file=lab.pin_file,
        group=GROUP_LABEL,
        group_serial="1" + members[0].serial,
        member_list=",".join(m.serial for m in members),
        log_dir=lab.log_dir,
        member_lines="".join(lines),
    )


# --------------------------------------------------------------------------
# small helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: str, mode: int) -> None:
    """Write *data* to *path* so that readers see the old file or the new one.

    The temporary file is created with *mode* already (``os.open``), so a
    0600 file is never readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_secret(path: Path, secret: str) -> None:
    """Create a 0600 file holding *secret* (no trailing newline); fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and never wider
        os.write(fd, secret.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


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


def _run_probe(request: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run :mod:`hacli.lab.probe` in a child Python; its answer, or LabError."""
    # -I: the probe needs only the standard library; ignore PYTHONPATH and co.
    cmd = [sys.executable, "-I", probe.__file__]
    try:
        proc = subprocess.run(
            cmd,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"a PKCS#11 check of the lab did not answer within {timeout:g} s") from None
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise LabError(f"PKCS#11 check of the lab failed: {last}") from None
    if "error" in answer:
        raise LabError(f"PKCS#11 check of the lab failed: {answer['error']}")
    return answer


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    # the server prints shell assignments on start; skip them
    lines = [ln for ln in lines if not ln.startswith("P11_KIT_SERVER_")]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------


class Lab:
    """A lab in one directory: N SoftHSM2 tokens, each behind its own ``p11-kit server``.

    Methods that change the lab (:meth:`up`, :meth:`down`, :meth:`fail`,
    :meth:`hang`, :meth:`restore`) hold a lock file in the directory, so two
    commands at once never corrupt ``lab.json``.  Every failure is a
    :class:`~hacli.errors.LabError` with one line of text.

    *timeout* bounds each wait for member processes (start, stop, checks).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        lock_timeout: float = 60.0,
    ):
        self.directory = Path(directory).expanduser().absolute()
        self.timeout = timeout
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Lab({str(self.directory)!r})"

    # ---- paths -------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        """The lab's ``Chrystoki.conf`` (its HA group and hacli section)."""
        return self.directory / "Chrystoki.conf"

    @property
    def softhsm2_conf(self) -> Path:
        """SoftHSM2 configuration to open the members' tokens directly."""
        return self.directory / "softhsm2.conf"

    @property
    def pin_file(self) -> Path:
        """The user PIN of every member token (mode 0600, no trailing newline)."""
        return self.directory / "pin"

    @property
    def so_pin_file(self) -> Path:
        """The Security Officer PIN of every member token (mode 0600)."""
        return self.directory / "so-pin"

    @property
    def state_file(self) -> Path:
        """``lab.json``: members, serials, pids.  Never holds a PIN."""
        return self.directory / "lab.json"

    @property
    def lock_file(self) -> Path:
        return self.directory / "lab.lock"

    @property
    def tokens_dir(self) -> Path:
        return self.directory / "tokens"

    @property
    def log_dir(self) -> Path:
        """``haLogPath`` of the lab group (the HA log goes here)."""
        return self.directory / "log"

    @property
    def client_library(self) -> str:
        """``p11-kit-client.so``: load a *copy* per member, with :attr:`LabMember.env` set."""
        return find_tools().p11kit_client

    def member_dir(self, index: int) -> Path:
        return self.directory / f"m{index}"

    # ---- reading -----------------------------------------------------------

    def exists(self) -> bool:
        """True when the directory holds a lab (made by :meth:`up`, not purged)."""
        return self.state_file.is_file()

    def pin(self) -> str:
        """The members' user PIN, read from :attr:`pin_file`."""
        return self._read_secret(self.pin_file)

    def so_pin(self) -> str:
        """The members' SO PIN, read from :attr:`so_pin_file`."""
        return self._read_secret(self.so_pin_file)

    def members(self) -> list[LabMember]:
        """The lab's members in order (member0 first)."""
        return [self._member(rec) for rec in self._load()["members"]]

    def member(self, which: str) -> LabMember:
        """The member with this serial or label, or a LabUsageError listing the valid ones."""
        return self._member(self._find(self._load(), which))

    @property
    def group_label(self) -> str:
        return GROUP_LABEL

    @property
    def group_serial(self) -> str:
        return "1" + self._load()["members"][0]["serial"]

    def status(self) -> LabStatus:
        """Every member's state, from its real process (alive? stopped?)."""
        return self._status(self._load())

    def list_tokens(
        self, which: str | None = None, timeout: float | None = None
    ) -> list[list[dict[str, str]]]:
        """What a PKCS#11 client sees through each member's socket (or one member's).

        One list per member of ``{"label", "serial"}`` dicts (present tokens).  A
        failed member shows ``[]``; a hung one makes this raise LabError after
        *timeout* seconds.  Runs in a child process (see :mod:`hacli.lab.probe`).
        """
        members = [self.member(which)] if which is not None else self.members()
        return self._list(members, self.timeout if timeout is None else timeout)

    # ---- changing ----------------------------------------------------------

    def up(self, members: int | None = None) -> LabStatus:
        """Bring the lab up: create it, or restart what is not running.

        On an empty (or missing) directory: create *members* tokens (default
        2), PIN files, ``softhsm2.conf``, ``Chrystoki.conf``, start one server
        per member and check that each serves exactly its own token.

        On an existing lab: start the servers of failed members (tokens and
        keys intact, same serials), resume hung ones, and leave running ones
        alone (same pids); a lab that is already up is not changed at all.
        ``Chrystoki.conf`` is only written again if it is missing.  *members*,
        if given, must equal the lab's member count.
        """
        if members is not None and not 1 <= members <= MAX_MEMBERS:
            raise LabUsageError(f"a lab has 1 to {MAX_MEMBERS} members, not {members}")
        with self._errors():
            tools = find_tools()
            self._check_path()
            fresh = not self.directory.exists()
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                with self._locked():
                    if self.exists():
                        return self._restart(members, tools)
                    return self._create(members or DEFAULT_MEMBERS, tools)
            except BaseException:
                # A lab that could not be made leaves no trace, not even its directory.
                if fresh and not self.exists():
                    shutil.rmtree(self.directory, ignore_errors=True)
                raise

    def down(self, purge: bool = False) -> None:
        """Stop every process of the lab; tokens stay on disk for the next :meth:`up`.

        SIGCONT (a stopped process ignores SIGTERM until it runs), SIGTERM to
        each member's process group, SIGKILL after a bounded wait, so no
        ``p11-kit-remote`` child is left behind.  ``purge=True`` also deletes
        the lab: the whole directory if :meth:`up` created it, otherwise only
        the lab's own files in it.
        """
        with self._errors():
            if not self.directory.is_dir():
                if purge:
                    return
                raise LabError(f"no lab in {self.directory}")
            with self._locked():
                state = self._load() if self.exists() else None
                if state is None and not purge:
                    raise LabError(f"no lab in {self.directory}")
                if state is not None:
                    for rec in state["members"]:
                        self._stop(rec)
                    if not purge:
                        self._save(state)
                if purge:
                    self._purge(state)

    def fail(self, which: str) -> MemberStatus:
        """Crash a member: SIGKILL its process group (server and its connections).

        Calls into it fail at once (``CKR_DEVICE_ERROR``).  No-op if it has failed.
        """
        with self._errors(), self._locked():
            state = self._load()
            rec = self._find(state, which)
            if self._state_of(rec) != FAILED:
                procs.signal_group(rec["pid"], signal.SIGKILL)
                if not procs.wait_until(lambda: not procs.group_pids(rec["pid"]), self.timeout):
                    raise LabError(f"{rec['label']}: processes survived SIGKILL")
            return self._member_status(rec)

    def hang(self, which: str) -> MemberStatus:
        """Freeze a member: SIGSTOP its process group; calls into it block until restored."""
        with self._errors(), self._locked():
            state = self._load()
            rec = self._find(state, which)
            current = self._state_of(rec)
            if current == FAILED:
                raise LabError(
                    f"member {rec['label']} ({rec['serial']}) is not running; restore it first"
                )
            if current == RUNNING:
                procs.signal_group(rec["pid"], signal.SIGSTOP)
                if not procs.wait_until(lambda: self._state_of(rec) == HUNG, self.timeout):
                    raise LabError(f"{rec['label']}: did not stop on SIGSTOP")
            return self._member_status(rec)

    def restore(self, which: str) -> MemberStatus:
        """Bring a member back: SIGCONT if hung, start its server again if failed.

        A restarted server uses the same socket and the same token, so keys
        made before the crash are there.  No-op if the member is running.
        """
        with self._errors(), self._locked():
            state = self._load()
            rec = self._find(state, which)
            current = self._state_of(rec)
            if current == HUNG:
                self._resume(rec)
            elif current == FAILED:
                self._start_all([rec], find_tools())
                self._save(state)
            return self._member_status(rec)

    # ---- internals ---------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn OS-level failures into one-line LabErrors."""
        try:
            yield
        except LabError:
            raise
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise LabError(f"{exc.strerror or exc}{where}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = FileLock(str(self.lock_file), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise LabError(
                f"another lab command is running in {self.directory} "
                f"(waited {self.lock_timeout:g} s for {self.lock_file})"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def _check_path(self) -> None:
        bad = _BAD_PATH_CHARS & set(str(self.directory))
        if bad:
            raise LabUsageError(
                f"lab directory {self.directory} contains {''.join(sorted(bad))!r}, "
                "which Chrystoki.conf cannot hold"
            )
        longest = self.member_dir(MAX_MEMBERS - 1) / SOCKET_NAME
        if len(os.fsencode(longest)) > _UNIX_PATH_MAX:
            raise LabUsageError(
                f"lab directory {self.directory} is too long for a unix socket path "
                f"(at most {_UNIX_PATH_MAX - len(b'/m15/' + SOCKET_NAME.encode())} bytes)"
            )

    def _read_secret(self, path: Path) -> str:
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise LabError(f"no lab in {self.directory} ({path.name} is missing)") from None
        except OSError as exc:
            raise LabError(f"cannot read {path}: {exc.strerror}") from None

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab in {self.directory} (run `hacli lab up`)") from None
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot read {self.state_file}: {exc}") from None
        if state.get("version") != STATE_VERSION or not state.get("members"):
            raise LabError(f"{self.state_file} is not a lab state file this hacli understands")
        return state

    def _save(self, state: dict[str, Any]) -> None:
        _write_atomic(self.state_file, json.dumps(state, indent=2) + "\n", 0o644)

    def _member(self, rec: dict[str, Any]) -> LabMember:
        return LabMember(
            index=rec["index"],
            label=rec["label"],
            serial=rec["serial"],
            socket=self.member_dir(rec["index"]) / SOCKET_NAME,
        )

    def _find(self, state: dict[str, Any], which: str) -> dict[str, Any]:
        which = str(which).strip()
        for rec in state["members"]:
            if which == rec["serial"] or which.lower() == rec["label"].lower():
                return rec
        valid = ", ".join(f"{r['serial']} ({r['label']})" for r in state["members"])
        raise LabUsageError(f"no lab member {which!r}; members: {valid}")

    def _state_of(self, rec: dict[str, Any]) -> str:
        """running / failed / hung, from the process itself.

        The pid must still be *our* server: same start time as recorded and
        the member's URI among its arguments, so a pid reused after a reboot
        is not taken for a live member.
        """
        pid = rec.get("pid")
        if not pid:
            return FAILED
        procs.reap(pid)
        state = procs.proc_state(pid)
        if state is None or state in "ZXx":
            return FAILED
        if procs.proc_start_time(pid) != rec.get("start_time"):
            return FAILED
        cmdline = procs.proc_cmdline(pid)
        # While `p11-kit server` execs p11-kit-server, /proc/<pid>/cmdline is
        # briefly empty; the start time above already rules out a reused pid.
        if cmdline and self._member(rec).uri not in cmdline:
            return FAILED
        return HUNG if state in "Tt" else RUNNING

    def _member_status(self, rec: dict[str, Any]) -> MemberStatus:
        state = self._state_of(rec)
        return MemberStatus(
            serial=rec["serial"],
            label=rec["label"],
            state=state,
            pid=rec["pid"] if state != FAILED else None,
        )

    def _status(
        self, state: dict[str, Any], started: tuple[str, ...] = (), created: bool = False
    ) -> LabStatus:
        return LabStatus(
            dir=str(self.directory),
            conf=str(self.conf_path),
            group=state["group"],
            softhsm2_conf=str(self.softhsm2_conf),
            pin_file=str(self.pin_file),
            members=tuple(self._member_status(rec) for rec in state["members"]),
            group_serial=state["group_serial"],
            started=started,
            created=created,
        )

    def _server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P11_KIT_SERVER_")}
        env["SOFTHSM2_CONF"] = str(self.softhsm2_conf)
        return env

    def _own_group(self, rec: dict[str, Any]) -> int | None:
        """The member's process group id if processes of ours are in it."""
        pgid = rec.get("pid")
        if not pgid:
            return None
        uri = self._member(rec).uri
        if any(uri in procs.proc_cmdline(p) for p in procs.group_pids(pgid)):
            return pgid
        return None

    def _stop(self, rec: dict[str, Any]) -> None:
        """End every process of a member (server, its connections, leftovers)."""
        pgid = self._own_group(rec)
        if pgid is not None:
            procs.stop_group(pgid, grace=min(3.0, self.timeout))
        # Belt and braces: anything else still serving this token (e.g. a
        # connection child whose group leader was killed long ago).
        for pid in procs.pids_with_arg(self._member(rec).uri):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        procs.wait_until(lambda: not procs.pids_with_arg(self._member(rec).uri), self.timeout)
        rec["pid"] = None
        rec["start_time"] = None

    def _resume(self, rec: dict[str, Any]) -> None:
        procs.signal_group(rec["pid"], signal.SIGCONT)
        if not procs.wait_until(lambda: self._state_of(rec) == RUNNING, self.timeout):
            raise LabError(f"{rec['label']}: did not resume on SIGCONT")

    def _spawn(self, rec: dict[str, Any], tools: LabTools) -> None:
        member = self._member(rec)
        mdir = member.socket.parent
        mdir.mkdir(mode=0o700, exist_ok=True)
        self._stop(rec)  # leftovers of an earlier server (connections it forked)
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
                env=self._server_env(),
                # own session => own process group: fail/hang/restore signal
                # the group, which holds the p11-kit-remote children too.
                start_new_session=True,
            )
        procs.adopt(proc)
        rec["pid"] = proc.pid
        rec["start_time"] = procs.proc_start_time(proc.pid)

    def _start_all(self, recs: list[dict[str, Any]], tools: LabTools) -> None:
        """Start the servers of *recs*, wait until they accept, check what they serve."""
        try:
            for rec in recs:
                self._spawn(rec, tools)
            pending = list(recs)

            def ready() -> bool:
                for rec in list(pending):
                    if self._state_of(rec) == FAILED:
                        log = _log_tail(self.member_dir(rec["index"]) / "server.log")
                        raise LabError(
                            f"p11-kit server of {rec['label']} exited" + (f": {log}" if log else "")
                        )
                    if _connectable(self._member(rec).socket):
                        pending.remove(rec)
                return not pending

            if not procs.wait_until(ready, self.timeout):
                names = ", ".join(r["label"] for r in pending)
                raise LabError(f"p11-kit server of {names} not ready within {self.timeout:g} s")
            self._verify(recs)
        except BaseException:
            for rec in recs:
                self._stop(rec)
            raise

    def _list(self, members: list[LabMember], timeout: float) -> list[list[dict[str, str]]]:
        client = find_tools().p11kit_client
        request = {"op": "list", "modules": [{"library": client, "env": m.env} for m in members]}
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        return _run_probe(request, env, timeout)["results"]

    def _verify(self, recs: list[dict[str, Any]]) -> None:
        """Each server must serve exactly its own token, as a client sees it."""
        members = [self._member(rec) for rec in recs]
        for member, seen in zip(members, self._list(members, self.timeout), strict=True):
            expected = [{"label": member.label, "serial": member.serial}]
            if seen != expected:
                shown = ", ".join(f"{t['label']}/{t['serial']}" for t in seen) or "no token"
                raise LabError(
                    f"{member.socket} serves {shown}, expected only {member.label}/{member.serial}"
                )

    # ---- create / restart / purge -------------------------------------------

    #: Entries of a lab directory (purge removes these when it did not create DIR).
    OWN_NAMES = (
        "lab.json",
        "Chrystoki.conf",
        "softhsm2.conf",
        "pin",
        "so-pin",
        "tokens",
        "log",
    )

    def _own_entries(self) -> list[Path]:
        found = [self.directory / n for n in self.OWN_NAMES if (self.directory / n).exists()]
        found += sorted(p for p in self.directory.glob("m*") if p.is_dir() and p.name[1:].isdigit())
        return found

    def _create(self, count: int, tools: LabTools) -> LabStatus:
        leftovers = self._own_entries()
        if leftovers:
            names = ", ".join(p.name for p in leftovers)
            raise LabError(
                f"{self.directory} holds part of a lab ({names}) but no lab.json; "
                "remove it with `hacli lab down --purge`"
            )
        others = [p for p in self.directory.iterdir() if p != self.lock_file]
        made: list[Path] = []
        recs: list[dict[str, Any]] = []
        try:
            _write_atomic(
                self.softhsm2_conf,
                SOFTHSM2_CONF_TEMPLATE.format(
                    dir=self.directory,
                    path=self.softhsm2_conf,
                    module=tools.softhsm2,
                    tokendir=self.tokens_dir,
                ),
                0o644,
            )
            made.append(self.softhsm2_conf)
            self.tokens_dir.mkdir(mode=0o700)
            made.append(self.tokens_dir)
            self.log_dir.mkdir(mode=0o755)
            made.append(self.log_dir)
            # 24 hex digits = 96 bits; alphanumeric so it survives any shell.
            pin, so_pin = secrets.token_hex(12), secrets.token_hex(12)
            _write_secret(self.pin_file, pin)
            made.append(self.pin_file)
            _write_secret(self.so_pin_file, so_pin)
            made.append(self.so_pin_file)
            labels = [f"member{i}" for i in range(count)]
            tokens = _run_probe(
                {
                    "op": "init",
                    "library": tools.softhsm2,
                    "labels": labels,
                    "pin": pin,
                    "so_pin": so_pin,
                },
                self._server_env(),
                self.timeout + 2.0 * count,
            )["tokens"]
            del pin, so_pin
            recs = [
                {
                    "index": i,
                    "label": t["label"],
                    "serial": t["serial"],
                    "pid": None,
                    "start_time": None,
                }
                for i, t in enumerate(tokens)
            ]
            for i in range(count):
                self.member_dir(i).mkdir(mode=0o700)
                made.append(self.member_dir(i))
            self._start_all(recs, tools)
            members = [self._member(r) for r in recs]
            _write_atomic(
                self.conf_path, _chrystoki_text(self, members, tools.p11kit_client), 0o644
            )
            made.append(self.conf_path)
            state = {
                "version": STATE_VERSION,
                "group": GROUP_LABEL,
                "group_serial": "1" + recs[0]["serial"],
                "created_dir": not others,
                "members": recs,
            }
            self._save(state)  # last: lab.json marks a complete lab
        except BaseException:
            for rec in recs:
                self._stop(rec)
            for path in reversed(made):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
            raise
        return self._status(state, started=tuple(r["serial"] for r in recs), created=True)

    def _restart(self, members: int | None, tools: LabTools) -> LabStatus:
        state = self._load()
        recs = state["members"]
        if members is not None and members != len(recs):
            raise LabUsageError(
                f"the lab in {self.directory} has {len(recs)} members, not {members}; "
                "`hacli lab down --purge` first to make a new one"
            )
        if not self.tokens_dir.is_dir():
            raise LabError(f"the lab's tokens are gone ({self.tokens_dir} is missing)")
        to_start = [r for r in recs if self._state_of(r) == FAILED]
        to_resume = [r for r in recs if self._state_of(r) == HUNG]
        if to_start:
            self._start_all(to_start, tools)
        for rec in to_resume:
            self._resume(rec)
        if not self.conf_path.exists():
            members_ = [self._member(r) for r in recs]
            _write_atomic(
                self.conf_path, _chrystoki_text(self, members_, tools.p11kit_client), 0o644
            )
        if to_start:
            self._save(state)
        started = tuple(r["serial"] for r in recs if r in to_start or r in to_resume)
        return self._status(state, started=started)

    def _purge(self, state: dict[str, Any] | None) -> None:
        if state is not None and state.get("created_dir"):
            shutil.rmtree(self.directory)
            return
        for path in [*self._own_entries(), self.lock_file]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
