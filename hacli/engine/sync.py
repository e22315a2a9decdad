"""Synchronisation (HASynchronize): what members lack, and copying it to them.

Members are compared by an *inventory* of their token objects (keys,
certificates, data objects; by class, CKA_ID, CKA_LABEL, key type); the union
is the target.  Automatic runs (after login, after a recovery, and every X s
while an alive member needs sync) happen only when the group's HASynchronize
flag is set and the group is logged in (private objects are invisible
otherwise); without the flag, login and recovery still take an inventory so
that ``needs_sync`` is right, but copy nothing.

Collaborators: the group's :class:`~hacli.engine.members.MemberSet`, its
:class:`~hacli.engine.objects.ObjectRegistry`, :class:`~hacli.engine.replicas.Replicas`
(copying), :class:`~hacli.engine.login.Login` (private objects need a login),
the HA log and the clock.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from hacli.conf.model_types import GroupConf
from hacli.engine import halog, replication
from hacli.engine.ckr import ckr_name, is_member_failure
from hacli.engine.login import Login
from hacli.engine.member import Connection, Member
from hacli.engine.members import MemberSet
from hacli.engine.objects import NotOnMember, ObjectRegistry
from hacli.engine.parallel import in_parallel
from hacli.engine.policy import Clock
from hacli.engine.replicas import Replicas
from hacli.engine.types import (
    InventoryDiff,
    MemberInventory,
    ObjectSummary,
    SyncFailure,
    SyncReport,
)

#: A member's token objects: (identity, other attributes) per object.
Inventory = list[tuple[dict[Any, Any], dict[Any, Any]]]
#: identity key -> (identity, attributes, serials of the members that hold it)
Union = dict[Any, tuple[dict[Any, Any], dict[Any, Any], list[str]]]


def union_of(inv: dict[str, Inventory]) -> tuple[Union, dict[str, list[Any]]]:
    """The union of the members' inventories, and per member the identity keys it lacks."""
    union: Union = {}
    for serial, objs in inv.items():
        for ident, info in objs:
            key = replication.ident_key(ident)
            if key not in union:
                union[key] = (ident, info, [])
            if serial not in union[key][2]:
                union[key][2].append(serial)
    missing = {serial: [k for k, (_i, _f, holders) in union.items() if serial not in holders]
               for serial in inv}
    return union, missing


def destroy_matching(conn: Connection, ident: dict[Any, Any]) -> int:
    """Destroy every object of identity ``ident`` on a member (worker thread)."""
    n = 0
    for obj in list(conn.work.get_objects(ident)):
        obj.destroy()
        conn.objects.pop(obj.handle, None)
        n += 1
    return n


class Synchronisation:
    """Inventories, ``inventory_diff``, ``synchronize`` and the automatic runs."""

    def __init__(self, conf: GroupConf, members: MemberSet, objects: ObjectRegistry,
                 replicas: Replicas, login: Login, log: halog.HALog | halog.NullLog,
                 clock: Clock, interval: float):
        self.conf = conf
        self.label = conf.label
        self._members = members
        self._objects = objects
        self._replicas = replicas
        self._login = login
        self._log = log
        self.clock = clock
        self._interval = interval
        # one synchronisation at a time; when the automatic one runs next
        self._sync_lock = threading.Lock()
        self._last_sync = clock()
        self._sync_period = interval

    def __repr__(self) -> str:
        return f"<Synchronisation {self.label} enabled={self.enabled}>"

    @property
    def enabled(self) -> bool:
        """``HASynchronize`` for this group: automatic synchronisation."""
        return bool(self.conf.synchronize)

    def due(self) -> bool:
        """True when the periodic retry should run now."""
        return (self.conf.synchronize and self._login.logged_in
                and any(m.alive and m.needs_sync for m in self._members)
                and self.clock() - self._last_sync > self._sync_period)

    def periodic(self) -> None:
        # periodic retry; backs off while nothing can be copied (e.g. a
        # sensitive key that no member can wrap), from X s up to an hour
        try:
            report = self.run()
        except Exception:
            report = None
        if report is not None and (report.copied or report.destroyed):
            self._sync_period = self._interval
        else:
            self._sync_period = min(max(self._sync_period, 1.0) * 2, 3600.0)

    def _catch_up(self) -> None:
        """Synchronise when HASynchronize is set, else replay what members missed
        and measure (``needs_sync``).  The journal is replayed either way: a
        destroy a member missed (or the orphan of a generation that was made
        again elsewhere) must not live on there, whatever the sync setting."""
        if self.conf.synchronize:
            self.run()
        else:
            with self._sync_lock:
                for m in self._members.serving():
                    self._replay_journal(m)
            self.refresh_needs_sync()

    def after_recovery(self, m: Member) -> None:
        """A member is back: catch it up (HASynchronize) or at least measure."""
        if not self._login.logged_in:
            return  # private objects are invisible: needs_sync stays as it is
        try:
            self._catch_up()
        except Exception as e:
            if is_member_failure(e) and m.alive:
                self._members.mark_failed(m, e)

    def after_login(self) -> None:
        # never fails the login; needs_sync stays as it was
        with contextlib.suppress(Exception):
            self._catch_up()

    def _inventories(self) -> dict[str, Inventory]:
        """Token objects of every alive member (in parallel, each bounded)."""
        found: dict[str, Inventory] = {}

        def one(m: Member) -> None:
            objs = self._members.best_effort(m, replication.list_token_objects,
                                             operation="C_FindObjects")
            if objs is not None:
                found[m.serial] = objs

        in_parallel(one, self._members.serving())
        return found

    def refresh_needs_sync(self) -> InventoryDiff:
        inv = self._inventories()
        union, missing = union_of(inv)
        out = []
        with self._members.lock:
            for m in self._members:
                if m.serial not in inv:
                    out.append(MemberInventory(m.serial, reachable=False,
                                               error=m.last_error or "CKR_DEVICE_ERROR"))
                    continue
                lacks = tuple(replication.summarize(*union[k][:2]) for k in missing[m.serial])
                m.needs_sync = bool(lacks) or bool(m.journal)
                out.append(MemberInventory(m.serial, reachable=True,
                                           objects=len(inv[m.serial]), missing=lacks))
        return InventoryDiff(self.label, tuple(out))

    def inventory_diff(self, pin: str | None = None) -> InventoryDiff:
        """Compare the token objects of the alive members (lunacm's "Needs sync").

        Returns, per member, what it lacks compared to the union of all
        members' token objects, and updates every alive member's
        ``needs_sync``.  Copies nothing.  Needs a login: when the group is not
        logged in, ``pin`` logs it in for the comparison and out again
        (``CKR_USER_NOT_LOGGED_IN`` without it).
        """
        with self._login.logged_in_for(pin, "inventory"):
            return self.refresh_needs_sync()

    def synchronize(self, pin: str | None = None) -> SyncReport:
        """``hagroup synchronize``: copy every token object a member lacks from a
        member that has it (and replay destroys/attribute changes members missed).

        Secret and private keys travel only wrapped under the transport key;
        public objects by value.  What cannot be copied is reported in
        :attr:`SyncReport.failed`, never hidden.  Idempotent.  Needs a login,
        like :meth:`inventory_diff`; runs whatever the HASynchronize flag says.
        """
        with self._login.logged_in_for(pin, "synchronize"):
            return self.run()

    def run(self) -> SyncReport:
        with self._sync_lock:
            self._last_sync = self.clock()
            copied: list[tuple[str, ObjectSummary, str]] = []
            failed: list[SyncFailure] = []
            destroyed = 0
            work: set[str] = set()
            # 1. changes made through the group while a member was down
            for m in self._members.serving():
                n = self._replay_journal(m)
                if n:
                    destroyed += n
                    work.add(m.serial)
            # 2. session objects made through the group (token objects: step 3)
            session_objs = self._objects.replicable_session_objects()
            for m in self._members.serving():
                for v in session_objs:
                    try:
                        if self._replicas.replicate_one(v, m):
                            copied.append((m.serial, replication.summarize(v.ident), "-"))
                    except Exception as e:
                        if is_member_failure(e) and not m.alive:
                            break
                        failed.append(SyncFailure(m.serial, replication.summarize(v.ident),
                                                  ckr_name(e), getattr(e, "detail", "")))
            # 3. token objects: the union of the members' inventories
            inv = self._inventories()
            union, missing = union_of(inv)
            for serial, keys in missing.items():
                m = self._members.get(serial)
                for k in keys:
                    ident, info, holders = union[k]
                    summary = replication.summarize(ident, info)
                    sources = [s for s in self._members if s.serial in holders and s.alive]
                    try:
                        how = self._replicas.transfer(ident, m, sources, operation="synchronize")
                        copied.append((serial, summary, how))
                    except Exception as e:
                        if is_member_failure(e) and not m.alive:
                            break
                        failed.append(SyncFailure(serial, summary, ckr_name(e),
                                                  getattr(e, "detail", "")))
            copied_to = {s for s, _o, _h in copied}
            failed_on: dict[str, str] = {}
            for f in failed:
                failed_on.setdefault(f.serial, f.ckr)
            with self._members.lock:
                for m in self._members:
                    if m.alive and m.serial in inv:
                        m.needs_sync = m.serial in failed_on or bool(m.journal)
                    if m.serial in copied_to:
                        self._objects.present_on(m.serial)
                unreachable = tuple(m.serial for m in self._members if m.serial not in inv)
            for m in self._members:
                if m.serial in copied_to or m.serial in failed_on or m.serial in work:
                    self._log.event(self.label, m.serial, halog.SYNCHRONIZED,
                                    failed_on.get(m.serial))
            return SyncReport(self.label, tuple(copied), tuple(failed), unreachable, destroyed)

    def _replay_journal(self, m: Member) -> int:
        """Apply destroys/attribute changes ``m`` missed; returns destroys done."""
        with self._members.lock:
            journal, m.journal = m.journal, []
        done = 0
        for i, entry in enumerate(journal):
            kind, ident, attrs = entry
            try:
                if kind == "destroy":
                    done += m.run(destroy_matching, ident, operation="C_DestroyObject")
                elif kind == "set":
                    vobj = self._objects.find(ident)
                    if vobj is not None:
                        m.run(lambda conn, v=vobj, a=attrs: self._replicas.set_on(m, conn, v, a),
                              operation="C_SetAttributeValue")
            except NotOnMember:
                pass
            except Exception as e:
                if is_member_failure(e):
                    with self._members.lock:
                        m.journal = journal[i:] + m.journal
                    self._members.mark_failed(m, e)
                    return done
        return done


__all__ = ["Synchronisation", "destroy_matching", "union_of"]
