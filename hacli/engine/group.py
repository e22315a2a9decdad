"""An HA group: several member tokens behind one virtual slot.

:class:`HAGroup` is what the engine, sessions and the CLI use.  It holds named
collaborators, each with a small interface and a module of its own:

* ``members``      -- :class:`~hacli.engine.members.MemberSet`: the members, their
  state machines, the balancer, a member going down, standby roles (members.py,
  standby.py)
* ``recovery``     -- :class:`~hacli.engine.recovery.Recovery`: connecting members,
  the per-member recovery policy, the background thread (recovery.py)
* ``login_state``  -- :class:`~hacli.engine.login.Login`: the user login, the PIN (login.py)
* ``executor``     -- :class:`~hacli.engine.execution.Executor`: one member with
  failover, or each member (execution.py)
* ``replicas``     -- :class:`~hacli.engine.replicas.Replicas`: objects on every
  member, the change journal (replicas.py)
* ``sync``         -- :class:`~hacli.engine.sync.Synchronisation`: inventories and
  catching members up (sync.py)
* ``operations``   -- :class:`~hacli.engine.operations.Operations`: multi-part
  operations pinned to one member (operations.py)

The parts never reach into each other's state; each gets what it uses in its
constructor.  A failure travels one way: a part tells ``members``, which tells
the group (a listener), which tells its sessions.  This module adds sessions,
status and token info; the application talks to the group through
:class:`~hacli.engine.session.VirtualSession` objects.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hacli.conf.model_types import GroupConf, HASettings
from hacli.engine import halog
from hacli.engine.ckr import CKR
from hacli.engine.exceptions import GroupDownError
from hacli.engine.execution import Executor
from hacli.engine.journal import ChangeJournal
from hacli.engine.login import Login
from hacli.engine.member import Connection, Member, MemberState
from hacli.engine.members import MemberSet
from hacli.engine.module import InstanceRegistry
from hacli.engine.objects import ObjectRegistry, VObject
from hacli.engine.operations import Operations
from hacli.engine.parallel import in_parallel
from hacli.engine.policy import Clock, RecoveryPolicy
from hacli.engine.recovery import Recovery
from hacli.engine.replicas import Replicas
from hacli.engine.replication import ident_of
from hacli.engine.session import VirtualSession
from hacli.engine.stats import MemberMetrics
from hacli.engine.sync import Synchronisation
from hacli.engine.types import (
    GroupStatus,
    InventoryDiff,
    MemberStatus,
    RecoveryResult,
    RecoveryState,
    SyncReport,
    TokenInfo,
)

T = TypeVar("T")


class HAGroup:
    """The virtual slot of one HA group (built by :class:`~hacli.engine.Engine`).

    Thread-safe: any number of application threads may use one group.
    """

    def __init__(self, conf: GroupConf, members: Sequence[Member], *, settings: HASettings,
                 registry: InstanceRegistry, all_members: Callable[[], Iterable[Member]],
                 log: halog.HALog | halog.NullLog, ids: itertools.count[int],
                 clock: Clock = time.monotonic, slot_id: int | None = None,
                 state_dir: Path | None = None):
        self.conf = conf
        self.label = conf.label
        self.serial = conf.serial
        self.slot_id = slot_id
        self.settings = settings
        self.timeout = max(0.001, settings.receive_timeout_ms / 1000.0)
        self.clock = clock
        self._ids = ids
        self.policy = RecoveryPolicy(settings.reconn_att, settings.auto_reconnect_interval, clock)
        self.members_set = MemberSet(self.label, members, self.policy, log, clock,
                                     standby=conf.standby)
        self.members: tuple[Member, ...] = self.members_set.members
        self._objects = ObjectRegistry(self.members_set.lock, ids)
        self.login_state = Login(self.label, self.members_set)
        self.executor = Executor(self.label, self.members_set, self._objects, self.recovery_tick)
        self._state_dir = state_dir
        self._journal: ChangeJournal | None = None
        self._journal_lock = threading.Lock()
        self.replicas = Replicas(self.members_set, self._objects, self.executor,
                                 self.change_journal)
        self.sync = Synchronisation(conf, self.members_set, self._objects, self.replicas,
                                    self.login_state, log, clock, self.policy.interval)
        self.operations = Operations(self.label, self.members_set, self.executor,
                                     self.recovery_tick, log, settings.multipart_journal_bytes)
        self.recovery = Recovery(
            self.label, self.members_set, registry=registry, all_members=all_members,
            pin=self.login_state.pin, timeout=self.timeout,
            enhanced=settings.recovery_mode == "activeEnhanced",
            catch_up=self.sync.after_recovery, periodic_due=self.sync.due,
            periodic=self.sync.periodic)
        self._sessions: dict[int, VirtualSession] = {}  # open virtual sessions by handle
        self._sessions_lock = threading.Lock()
        self.members_set.on_failure(self._member_failed)

    def __repr__(self) -> str:
        alive = sum(m.alive for m in self.members)
        return f"<HAGroup {self.label} serial={self.serial} {alive}/{len(self.members)} alive>"

    def change_journal(self) -> ChangeJournal:
        """The group's durable journal of missed changes (opened on first use:
        ``$XDG_STATE_HOME/hacli/journal/<group serial>.jsonl``)."""
        with self._journal_lock:
            if self._journal is None:
                self._journal = ChangeJournal.for_group(self.serial, self._state_dir)
            return self._journal

    # -- life cycle --------------------------------------------------------
    def start(self) -> None:
        """Connect every member; start the background recovery (activeEnhanced);
        then standby roles apply (a standby is promoted if no active member answered)."""
        self.recovery.start()
        self.members_set.start_roles()

    def stop(self) -> None:
        """Stop background work (recovery thread, catch-ups)."""
        self.recovery.stop()

    def end_operations(self) -> None:
        """End the multi-part operations of every session (engine close), so
        no helper thread is left parked in an operation."""
        for vs in self.sessions():
            with contextlib.suppress(Exception):
                vs._abort_operations()

    def forget_secrets(self) -> None:
        """Drop the PIN this group holds (engine close)."""
        self.login_state.forget()

    def close(self) -> None:
        """Stop background work and close virtual sessions (engine.close does the rest)."""
        self.stop()
        for vs in self.sessions():
            with contextlib.suppress(Exception):
                vs.close()

    # -- failure news: member -> group -> sessions ---------------------------
    def _member_failed(self, m: Member) -> None:
        for vs in self.sessions():
            vs._member_failed(m)

    # -- recovery ----------------------------------------------------------
    def recovery_tick(self) -> bool:
        """The origin pseudo-code; run before every call through the group."""
        return self.recovery.tick()

    def recover(self, serial: str | None = None) -> tuple[RecoveryResult, ...]:
        """``hagroup recover``: try ``serial`` (or every member that is down) now,
        also after its automatic attempts are used up; a result per member
        (see :meth:`Recovery.recover`)."""
        return self.recovery.recover(serial)

    def recover_now(self, serial: str | None = None) -> bool:
        """Recover ``serial`` (or the member down longest) now; True when it serves."""
        return self.recovery.recover_now(serial)

    @property
    def standby(self) -> tuple[str, ...]:
        """Serials of the standby members (``VirtualTokenNNStandby``)."""
        return self.conf.standby

    def role_of(self, serial: str) -> str:
        """``active``, ``standby`` or ``promoted`` (a standby serving now)."""
        m = self.members_set.get(serial)
        with self.members_set.lock:
            return self.members_set.roles.role_of(m)

    # -- login -------------------------------------------------------------
    @property
    def logged_in(self) -> bool:
        """True while the user (Crypto Officer) is logged in."""
        return self.login_state.logged_in

    @property
    def so_logged_in(self) -> bool:
        """True while the Security Officer is logged in."""
        return self.login_state.so_logged_in

    def login(self, pin: str, so: bool = False) -> None:
        """Log in to every alive member with the same PIN (kept only to re-login
        recovered members; never shown); ``so``: as the Security Officer.

        After a user login the members are compared (inventory, ``needs_sync``)
        and, when the group's HASynchronize flag is set, synchronised; neither
        can fail the login.
        """
        self.recovery_tick()
        self.login_state.login(pin, so)
        if not so:
            self.sync.after_login()

    def logout(self) -> None:
        """Log out of every member and forget the PIN."""
        self.recovery_tick()
        self.login_state.logout()

    def set_pin(self, old: str, new: str, member: str | None = None) -> tuple[str, ...]:
        """``C_SetPIN`` of the logged-in role (else the user's) on every member,
        all or nothing as far as possible (``member``: on that one only); the
        serials changed (see :meth:`Login.set_pin`)."""
        self.recovery_tick()
        only = self.members_set.get(member) if member is not None else None
        return self.login_state.set_pin(old, new, only)

    def init_pin(self, pin: str, member: str | None = None) -> tuple[str, ...]:
        """``C_InitPIN`` (the SO logged in sets the user PIN) on every member
        (``member``: on that one only); the serials set (see :meth:`Login.init_pin`)."""
        self.recovery_tick()
        only = self.members_set.get(member) if member is not None else None
        return self.login_state.init_pin(pin, only)

    # -- calls (what sessions use) ---------------------------------------------
    def execute(self, operation: str, fn: Callable[..., T], vobjs: Sequence[VObject] = (),
                only: Member | None = None, args: tuple[Any, ...] = ()) -> T:
        """Run ``fn(member, conn, *real_objects, *args)`` on one member, failing over."""
        return self.executor.execute(operation, fn, vobjs, only, args)

    def on_each(self, operation: str, fn: Callable[..., Any], vobj: VObject | None = None,
                only: Member | None = None) -> dict[str, Any]:
        """Run ``fn(member, conn[, obj])`` on every alive member."""
        return self.executor.on_each(operation, fn, vobj, only)

    def create(self, operation: str, fn: Callable[..., list[Any]], vobjs: Sequence[VObject] = (),
               owner: int | None = None, only: Member | None = None,
               replay: bool = False) -> list[VObject]:
        """Create objects on one member, then on every other (see :class:`Replicas`)."""
        return self.replicas.create(operation, fn, vobjs, owner, only, replay)

    def destroy(self, vobj: VObject, only: Member | None = None) -> None:
        """Destroy an object on every member (journaled for members that are down)."""
        self.replicas.destroy(vobj, only)

    def set_attributes(self, vobj: VObject, attrs: dict[Any, Any],
                       only: Member | None = None) -> None:
        """Set attributes on every member (journaled for members that are down)."""
        self.replicas.set_attributes(vobj, attrs, only)

    def can_wrap(self, only: Member | None = None) -> bool:
        """True when every alive member can send and receive keys under the transport key."""
        return self.replicas.can_wrap(only)

    def generation_mode(self, operation: str, only: Member | None = None) -> str:
        """How a secret or private key generated now reaches every member."""
        return self.replicas.generation_mode(operation, only)

    def vobject(self, handle: int, operation: str = "") -> VObject:
        """The virtual object with this handle (``CKR_OBJECT_HANDLE_INVALID`` if none)."""
        return self._objects.get(handle, operation)

    def register_found(self, m: Member, conn: Connection, obj: Any, owner: int) -> VObject:
        """The virtual object of a real object a search found on ``m`` (worker side)."""
        return self._objects.register(m, conn, obj, ident_of(obj), owner)

    # -- synchronisation -----------------------------------------------------
    @property
    def sync_enabled(self) -> bool:
        """``HASynchronize`` for this group: automatic synchronisation."""
        return self.sync.enabled

    def inventory_diff(self, pin: str | None = None) -> InventoryDiff:
        """Compare the token objects of the alive members (lunacm's "Needs sync")."""
        self.recovery_tick()
        return self.sync.inventory_diff(pin)

    def synchronize(self, pin: str | None = None, *, adopt: bool = False,
                    dry_run: bool = False) -> SyncReport:
        """``hagroup synchronize``: replay what members missed, copy session
        objects, report conflicts (``adopt``: copy them); ``dry_run``: the plan
        only (see :meth:`Synchronisation.synchronize`)."""
        self.recovery_tick()
        return self.sync.synchronize(pin, adopt=adopt, dry_run=dry_run)

    # -- sessions ------------------------------------------------------------
    def open_session(self, rw: bool = True, member: str | None = None,
                     slot_id: int | None = None) -> VirtualSession:
        """Open a virtual session (``member``: pin it to one member, no failover;
        ``slot_id``: the slot it was opened on, when the caller numbers member
        slots -- the engine does; default: the group's virtual slot)."""
        self.recovery_tick()
        only = self.members_set.get(member) if member is not None else None
        if only is None and not self.members_set.any_serving():
            raise GroupDownError("C_OpenSession", self.label)
        if slot_id is None and only is None:
            slot_id = self.slot_id
        vs = VirtualSession(self, next(self._ids), rw=rw, only=only, slot_id=slot_id)
        with self._sessions_lock:
            self._sessions[vs.handle] = vs
        return vs

    def _session_closed(self, vs: VirtualSession) -> None:
        with self._sessions_lock:
            self._sessions.pop(vs.handle, None)
        with self.members_set.lock:
            owned = self._objects.owned_by(vs.handle)
        for v in owned:
            try:
                self.destroy(v)
            except Exception:
                self._objects.forget(v)

    def sessions(self) -> list[VirtualSession]:
        with self._sessions_lock:
            return list(self._sessions.values())

    # -- status ------------------------------------------------------------
    def status(self, probe: bool = True) -> GroupStatus:
        """HA status (no PIN needed).  Probes alive members (C_GetTokenInfo).

        The first report after a member failed shows ``CKR_DEVICE_ERROR`` for
        it, later ones ``CKR_TOKEN_NOT_PRESENT`` until it is back.
        """
        self.recovery_tick()
        if probe:
            in_parallel(self._probe, self.members_set.serving())
        recovery = {m.serial: self.recovery_state(m.serial) for m in self.members}
        now = self.clock()
        out = []
        roles = self.members_set.roles
        with self.members_set.lock:
            for m in self.members:
                if m.alive:
                    code = CKR.OK
                elif not m.failure_reported:
                    code = CKR.DEVICE_ERROR
                    m.failure_reported = True
                else:
                    code = CKR.TOKEN_NOT_PRESENT
                out.append(MemberStatus(
                    serial=m.serial, status=code, alive=m.alive, needs_sync=m.needs_sync,
                    last_error=m.last_error, ops=m.ops,
                    down_for=None if m.down_since is None or m.alive else now - m.down_since,
                    recovery=None if m.alive else recovery[m.serial],
                    role=roles.role_of(m)))
            any_alive = any(m.alive for m in self.members)
        return GroupStatus(label=self.label, serial=self.serial,
                           status=CKR.OK if any_alive else CKR.DEVICE_ERROR,
                           members=tuple(out), logged_in=self.logged_in,
                           recovery_attempts=self.policy.attempts)

    def recovery_state(self, serial: str) -> RecoveryState | None:
        """Where a down member stands in the recovery policy: when it went
        down, attempts used and left, when the next one is due (wall-clock
        times); None while it serves.  Read-only."""
        policy = self.policy
        record = policy.state_of(serial)
        if record is None:
            return None
        to_wall = time.time() - self.clock()  # the policy runs on the group's clock
        due = policy.next_attempt(serial)
        return RecoveryState(down_since=record.down_since + to_wall,
                             attempts_used=record.attempts,
                             attempts_left=policy.attempts_left(serial),
                             next_attempt=None if due is None else due + to_wall)

    def _probe(self, m: Member) -> None:
        # C_GetTokenInfo needs no PIN: a fresh process notices a dead member
        self.members_set.best_effort(m, lambda conn: conn.token.slot.get_token(),
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
        with self.members_set.lock:
            return {m.serial: m.ops for m in self.members}

    def metrics(self) -> tuple[MemberMetrics, ...]:
        """Every member's counters and state now (for metrics and ``--watch``)."""
        return self.members_set.metrics()

    def member_states(self) -> dict[str, MemberState]:
        with self.members_set.lock:
            return {m.serial: m.state for m in self.members}


__all__ = ["HAGroup", "VObject"]
