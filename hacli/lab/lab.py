"""The lab: member HSMs as separate processes.

Each member is a SoftHSM2 token served by its own ``p11-kit server`` process,
in its own process group, on a unix socket in the lab directory.  A member can
be crashed (SIGKILL), frozen (SIGSTOP) and restored independently, so failover
and recovery can be watched on one machine.  See ``docs/lab.md``.

This module is the façade: :class:`Lab` takes the lock, reads ``lab.json``,
asks :mod:`hacli.lab.servers` to act on processes and saves what changed.
Paths are in :mod:`hacli.lab.paths`, a new lab is made by
:mod:`hacli.lab.create`.  No click or rich imports; ``hacli lab ...`` is a thin
layer over :class:`Lab`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from hacli.conf.store import legacy_lock_file
from hacli.errors import LabError
from hacli.lab import migrate, servers
from hacli.lab.create import create_lab
from hacli.lab.files import remove
from hacli.lab.model import (
    DEFAULT_MEMBERS,
    GROUP_LABEL,
    HUNG,
    MAX_MEMBERS,
    RUNNING,
    LabMember,
    LabStatus,
    LabUsageError,
    MemberStatus,
    group_serial_of,
)
from hacli.lab.paths import LabPaths
from hacli.lab.state import find_record, load_state, save_state
from hacli.lab.templates import (
    update_chrystoki_conf,
    write_chrystoki_conf,
    write_softhsm2_conf,
)
from hacli.lab.tokens import list_tokens
from hacli.lab.tools import LabTools, find_tools
from hacli.pins import PinRequest, Role, Source, find_pin, lab_pin_path


class Lab(LabPaths):
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
        super().__init__(directory)
        self.timeout = timeout
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"Lab({str(self.directory)!r})"

    @property
    def client_library(self) -> str:
        """``p11-kit-client.so``: load a *copy* per member, with :attr:`LabMember.env` set."""
        return find_tools().p11kit_client

    # ---- reading -----------------------------------------------------------

    def exists(self) -> bool:
        """True when the directory holds a lab (made by :meth:`up`, not purged)."""
        return self.state_file.is_file()

    def pin(self) -> str:
        """The members' user PIN, read from :attr:`pin_file`."""
        return self._read_pin(Role.USER)

    def so_pin(self) -> str:
        """The members' SO PIN, read from :attr:`so_pin_file`."""
        return self._read_pin(Role.SO)

    def _read_pin(self, role: Role) -> str:
        # hacli's one PIN reader, told to look at the lab's own file only
        found = find_pin(PinRequest(role, lab_dir=self.directory), (Source.LAB,))
        if found is None:
            name = lab_pin_path(self.directory, role).name
            raise LabError(f"no lab in {self.directory} ({name} is missing)")
        return found.pin

    def members(self) -> list[LabMember]:
        """The lab's members in order (member0 first)."""
        return [self.member_of(rec) for rec in self._load()["members"]]

    def member(self, which: str) -> LabMember:
        """The member with this serial or label, or a LabUsageError listing the valid ones."""
        return self.member_of(find_record(self._load(), which))

    def member_softhsm2_conf(self, which: str) -> Path:
        """The SoftHSM2 configuration that opens this member's token (and no other) directly."""
        return self.member(which).softhsm2_conf

    @property
    def group_label(self) -> str:
        return GROUP_LABEL

    @property
    def group_serial(self) -> str:
        return group_serial_of(self._load()["members"][0]["serial"])

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
        return list_tokens(members, self.timeout if timeout is None else timeout)

    # ---- changing ----------------------------------------------------------

    def up(self, members: int | None = None) -> LabStatus:
        """Bring the lab up: create it, or restart what is not running.

        On an empty (or missing) directory: create *members* tokens (default
        2), each in its own token directory with its own ``softhsm2.conf``, PIN
        files, ``Chrystoki.conf``, start one server per member and check that
        each serves exactly its own token.

        On an existing lab: start the servers of failed members (tokens and
        keys intact, same serials), resume hung ones, and leave running ones
        alone (same pids); a lab that is already up is not changed at all.
        ``Chrystoki.conf`` is only written again if it is missing.  *members*,
        if given, must equal the lab's member count.

        A lab an older hacli made is brought up to date, and
        :attr:`LabStatus.notes` says what changed: the members' tokens move
        from the one token directory they shared into their own
        (:func:`hacli.lab.migrate.split_shared_tokens`; the servers are stopped
        for it and started again), servers running a p11-kit other than the
        lab's build are started again on it, and the old settings of its
        ``Chrystoki.conf`` are updated in place
        (:func:`hacli.lab.templates.update_chrystoki_conf`).

        Every server started is checked through the lab's client module: it
        serves its own token, and lists ``CKM_AES_KEY_WRAP_PAD`` and
        ``CKM_AES_CBC_PAD`` (see :func:`hacli.lab.servers.verify`).
        """
        if members is not None and not 1 <= members <= MAX_MEMBERS:
            raise LabUsageError(f"a lab has 1 to {MAX_MEMBERS} members, not {members}")
        with self._errors():
            tools = find_tools()
            self.check_path()
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

    def down(self, purge: bool = False) -> tuple[str, ...]:
        """Stop every process of the lab; tokens stay on disk for the next :meth:`up`.

        SIGCONT (a stopped process ignores SIGTERM until it runs), SIGTERM to
        each member's process group, SIGKILL after a bounded wait, so no
        ``p11-kit-remote`` child is left behind.  Its members are ``stopped``
        afterwards.  ``purge=True`` also deletes the lab: the whole directory
        if :meth:`up` created it, otherwise the lab's own files in it, and
        then the directory too when nothing else is left in it.

        Returns the names of the entries kept because the lab did not make
        them (``purge`` only; empty when the directory is gone).  A directory
        that holds no lab (not even part of one) is a LabError, and nothing
        is created or removed.
        """
        with self._errors():
            self._require(partial=purge)
            with self._locked():
                state = self._load() if self.exists() else None
                if state is not None:
                    for rec in state["members"]:
                        servers.stop(self, rec, self.timeout)
                    if not purge:
                        self._save(state)
                return self._purge(state) if purge else ()

    def fail(self, which: str) -> MemberStatus:
        """Crash a member: SIGKILL its process group (server and its connections).

        Calls into it fail at once (``CKR_DEVICE_ERROR``).  No-op if it has failed.
        """
        with self._errors():
            self._require()
        with self._errors(), self._locked():
            rec = find_record(self._load(), which)
            if servers.has_process(servers.state_of(self, rec)):
                servers.kill(rec, self.timeout)
            return servers.member_status(self, rec)

    def hang(self, which: str) -> MemberStatus:
        """Freeze a member: SIGSTOP its process group; calls into it block until restored."""
        with self._errors():
            self._require()
        with self._errors(), self._locked():
            rec = find_record(self._load(), which)
            current = servers.state_of(self, rec)
            if not servers.has_process(current):
                raise LabError(
                    f"member {rec['label']} ({rec['serial']}) is not running ({current}); "
                    "restore it first"
                )
            if current == RUNNING:
                servers.freeze(self, rec, self.timeout)
            return servers.member_status(self, rec)

    def restore(self, which: str) -> MemberStatus:
        """Bring a member back: SIGCONT if hung, start its server again if failed.

        A restarted server uses the same socket and the same token, so keys
        made before the crash are there.  No-op if the member is running.
        """
        with self._errors():
            self._require()
        with self._errors(), self._locked():
            state = self._load()
            rec = find_record(state, which)
            current = servers.state_of(self, rec)
            if current == HUNG:
                servers.resume(self, rec, self.timeout)
            elif not servers.has_process(current):
                if migrate.shared_layout(self, state["members"]):
                    raise LabError(
                        f"the lab in {self.directory} keeps every member's token in one "
                        "directory (an older hacli made it): run `hacli lab up` to give "
                        "each member its own"
                    )
                servers.start(self, [rec], find_tools(), self.timeout)
                self._save(state)
            return servers.member_status(self, rec)

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

    def _require(self, partial: bool = False) -> None:
        """LabError ``no lab in DIR`` unless the directory holds a lab (with
        *partial*: or what is left of one), checked before the lock file is
        made, so a command on a missing lab creates nothing."""
        if self.exists() or (partial and self.directory.is_dir() and self._leftovers()):
            return
        load_state(self.state_file)  # the one "no lab" error (or why lab.json is unreadable)

    def _leftovers(self) -> list[Path]:
        """The lab's own entries in the directory, lock files included."""
        # legacy_lock_file: what hacli versions before store.locked left beside the file
        locks = [p for p in (legacy_lock_file(self.conf_path), self.lock_file) if p.exists()]
        return [*self.own_entries(), *locks]

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

    def _load(self) -> dict[str, Any]:
        return load_state(self.state_file)

    def _save(self, state: dict[str, Any]) -> None:
        save_state(self.state_file, state)

    def _status(
        self,
        state: dict[str, Any],
        started: tuple[str, ...] = (),
        created: bool = False,
        notes: tuple[str, ...] = (),
    ) -> LabStatus:
        tools = find_tools()
        return LabStatus(
            dir=str(self.directory),
            conf=str(self.conf_path),
            group=state["group"],
            softhsm2_conf=str(self.softhsm2_conf),
            pin_file=str(self.pin_file),
            members=tuple(servers.member_status(self, rec) for rec in state["members"]),
            p11kit_client=tools.p11kit_client,
            p11kit_version=tools.p11kit_version,
            group_serial=state["group_serial"],
            started=started,
            created=created,
            notes=notes,
        )

    def _create(self, count: int, tools: LabTools) -> LabStatus:
        state = create_lab(self, count, tools, self.timeout)
        started = tuple(r["serial"] for r in state["members"])
        return self._status(state, started=started, created=True)

    def _restart(self, members: int | None, tools: LabTools) -> LabStatus:
        state = self._load()
        recs = state["members"]
        if members is not None and members != len(recs):
            raise LabUsageError(
                f"the lab in {self.directory} has {len(recs)} members, not {members}; "
                "`hacli lab down --purge` first to make a new one"
            )
        notes: list[str] = []
        if migrate.shared_layout(self, recs):
            # An older lab: every member's token in one directory.  Its servers
            # use it, and a token may move only while no SoftHSM2 has it open.
            for rec in recs:
                if servers.has_process(servers.state_of(self, rec)):
                    servers.stop(self, rec, self.timeout)
                    notes.append(
                        f"{rec['label']}: its server used the lab's one token directory; "
                        "started again on its own"
                    )
            notes += migrate.split_shared_tokens(self, recs, tools.softhsm2, self.timeout)
        for rec in recs:
            own = self.tokens_dir_of(rec["index"])
            if not migrate.token_dirs(own):
                raise LabError(f"the token of {rec['label']} is gone ({own} holds no token)")
            if not self.softhsm2_conf_of(rec["index"]).exists():
                write_softhsm2_conf(self, rec["index"], tools.softhsm2)
        for rec in recs:
            # A server an older hacli started runs the system's p11-kit, which the
            # build's client cannot talk to: start it again on the build.
            if servers.has_process(servers.state_of(self, rec)) and not servers.runs_build(
                rec, tools
            ):
                was = servers.executable(rec)
                servers.stop(self, rec, self.timeout)
                notes.append(
                    f"{rec['label']}: its server ran {was}; started again on the lab's "
                    f"p11-kit {tools.p11kit_version} ({tools.p11kit_prefix})"
                )
        to_start = [r for r in recs if not servers.has_process(servers.state_of(self, r))]
        to_resume = [r for r in recs if servers.state_of(self, r) == HUNG]
        if to_start:
            servers.start(self, to_start, tools, self.timeout)
        for rec in to_resume:
            servers.resume(self, rec, self.timeout)
        members_now = [self.member_of(r) for r in recs]
        if not self.conf_path.exists():
            write_chrystoki_conf(self, members_now, tools.p11kit_client)
        else:
            notes += update_chrystoki_conf(self, members_now, tools.p11kit_client)
        if to_start:
            self._save(state)
        started = tuple(r["serial"] for r in recs if r in to_start or r in to_resume)
        return self._status(state, started=started, notes=tuple(notes))

    def _purge(self, state: dict[str, Any] | None) -> tuple[str, ...]:
        """Delete the lab; the names of the entries kept (the lab did not make them)."""
        if state is not None and state.get("created_dir"):
            shutil.rmtree(self.directory)
            return ()
        for path in self._leftovers():
            remove(path)
        kept = tuple(sorted(p.name for p in self.directory.iterdir()))
        if not kept:
            # nothing of anyone else's is left: the directory goes too, as
            # "removed" promises (it may have been made by a command that
            # found no lab, or by the user for the lab)
            self.directory.rmdir()
        return kept
