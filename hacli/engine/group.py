"""An HA group: several member tokens behind one virtual slot.

:class:`HAGroup` is what the engine, sessions and the CLI use; it is assembled
from one part per job, each in its own module:

* groupcore.py  -- the shared state; member lookup; a member going down
* recovery.py   -- connecting members, the recovery policy, ``recover_now``
* login.py      -- the user login on every member, the kept PIN
* execution.py  -- ``execute`` (one member, failover) and ``on_each``
* operations.py -- multi-part operations pinned to one member
* replicas.py   -- objects created, destroyed and changed on every member
* sync.py       -- inventories, ``inventory_diff``, ``synchronize``

This module adds sessions, status and token info.  The application talks to
the group through :class:`~hacli.engine.session.VirtualSession` objects;
virtual object handles (objects.py) map to one real handle per member, and
real handles and sessions come and go behind them (see docs/engine.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

from hacli.engine.exceptions import GroupDownError
from hacli.engine.execution import Execution
from hacli.engine.login import Login
from hacli.engine.member import Connection, Member, MemberState
from hacli.engine.objects import VObject
from hacli.engine.operations import Operations
from hacli.engine.parallel import in_parallel
from hacli.engine.recovery import Recovery
from hacli.engine.replicas import Replicas
from hacli.engine.session import VirtualSession
from hacli.engine.sync import Synchronisation
from hacli.engine.types import GroupStatus, MemberStatus, TokenInfo


class HAGroup(Recovery, Login, Synchronisation, Replicas, Operations, Execution):
    """The virtual slot of one HA group (built by :class:`~hacli.engine.Engine`;
    the constructor is :class:`~hacli.engine.groupcore.GroupCore`'s).

    Thread-safe: any number of application threads may use one group.
    """

    def __repr__(self) -> str:
        alive = sum(m.alive for m in self.members)
        return f"<HAGroup {self.label} serial={self.serial} {alive}/{len(self.members)} alive>"

    def forget_secrets(self) -> None:
        """Drop every key value and the PIN this group holds (engine close)."""
        self._pin = None

    def vobject(self, handle: int, operation: str = "") -> VObject:
        """The virtual object with this handle (``CKR_OBJECT_HANDLE_INVALID`` if none)."""
        return self._objects.get(handle, operation)

    def open_session(self, rw: bool = True, member: str | None = None) -> VirtualSession:
        """Open a virtual session (``member``: pin it to one member, no failover)."""
        self.recovery_tick()
        only = self._member(member) if member is not None else None
        if only is None and not any(m.alive for m in self.members):
            raise GroupDownError("C_OpenSession", self.label)
        vs = VirtualSession(self, next(self._ids), rw=rw, only=only)
        with self._lock:
            self._sessions[vs.handle] = vs
        return vs

    def _session_closed(self, vs: VirtualSession) -> None:
        with self._lock:
            self._sessions.pop(vs.handle, None)
            owned = self._objects.owned_by(vs.handle)
        for v in owned:
            try:
                self.destroy(v)
            except Exception:
                self._objects.forget(v)

    def sessions(self) -> list[VirtualSession]:
        with self._lock:
            return list(self._sessions.values())

    def status(self, probe: bool = True) -> GroupStatus:
        """HA status (no PIN needed).  Probes alive members (C_GetTokenInfo).

        The first report after a member failed shows ``CKR_DEVICE_ERROR`` for
        it, later ones ``CKR_TOKEN_NOT_PRESENT`` until it is back.
        """
        self.recovery_tick()
        if probe:
            in_parallel(self._probe, self._alive_members())
        now = self.clock()
        out = []
        with self._lock:
            for m in self.members:
                if m.alive:
                    code = "CKR_OK"
                elif not m.failure_reported:
                    code = "CKR_DEVICE_ERROR"
                    m.failure_reported = True
                else:
                    code = "CKR_TOKEN_NOT_PRESENT"
                out.append(MemberStatus(
                    serial=m.serial, status=code, alive=m.alive, needs_sync=m.needs_sync,
                    last_error=m.last_error, ops=m.ops,
                    down_for=None if m.down_since is None or m.alive else now - m.down_since))
            any_alive = any(m.alive for m in self.members)
        return GroupStatus(label=self.label, serial=self.serial,
                           status="CKR_OK" if any_alive else "CKR_DEVICE_ERROR",
                           members=tuple(out), logged_in=self.logged_in,
                           recovery_attempts=self.policy.attempts)

    def _probe(self, m: Member) -> None:
        # C_GetTokenInfo needs no PIN: a fresh process notices a dead member
        self._best_effort(m, lambda conn: conn.token.slot.get_token(),
                          operation="C_GetTokenInfo")

    def token_info(self) -> TokenInfo:
        """Token info of the virtual slot (label and serial of the group)."""
        def task(m: Member, conn: Connection) -> Any:
            return conn.token.slot.get_token()

        tok = self.execute("C_GetTokenInfo", task)
        return TokenInfo(label=self.label, serial=self.serial, manufacturer_id="hacli",
                         model="HA virtual token", flags=int(tok.flags),
                         hardware_version=tok.hardware_version,
                         firmware_version=tok.firmware_version,
                         members=tuple(m.serial for m in self.members))

    def op_counts(self) -> dict[str, int]:
        """Operations served per member (for ``multitoken``)."""
        with self._lock:
            return {m.serial: m.ops for m in self.members}

    def member_states(self) -> dict[str, MemberState]:
        with self._lock:
            return {m.serial: m.state for m in self.members}

    def close(self) -> None:
        """Stop background work and close virtual sessions (engine.close does the rest)."""
        self.stop()
        for vs in self.sessions():
            with contextlib.suppress(Exception):
                vs.close()


__all__ = ["HAGroup", "VObject"]
