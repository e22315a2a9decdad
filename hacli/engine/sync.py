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
import time
from typing import Any

from pkcs11 import Attribute, CertificateType, KeyType, ObjectClass

from hacli.conf.model_types import GroupConf
from hacli.engine import halog, replication
from hacli.engine.ckr import CKR, ckr_name, is_member_failure
from hacli.engine.journal import Entry
from hacli.engine.login import Login
from hacli.engine.member import Connection, Member
from hacli.engine.members import MemberSet
from hacli.engine.objects import NotOnMember, ObjectRegistry
from hacli.engine.parallel import in_parallel
from hacli.engine.policy import Clock
from hacli.engine.replicas import Replicas
from hacli.engine.replication import KEY_CLASSES
from hacli.engine.types import (
    InventoryDiff,
    MemberInventory,
    ObjectSummary,
    SyncConflict,
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
        conn.destroy(obj)
        n += 1
    return n


def half_made(ident: dict[Any, Any]) -> bool:
    """True for the identity of an object whose creation was cut before its
    attributes were written: a key with neither label nor ID (every key the
    group makes has an ID), or a data object with neither label nor
    application (an object whose CKA_CLASS was not written yet reads as one)."""
    cls = ident.get(Attribute.CLASS)
    if cls in KEY_CLASSES:
        return not ident.get(Attribute.LABEL) and not ident.get(Attribute.ID)
    if cls == ObjectClass.DATA:
        return not ident.get(Attribute.LABEL) and not ident.get(Attribute.APPLICATION)
    return False


def _objects_of_class(conn: Connection, cls: Any) -> list[Any]:
    # by class alone: a half-made object may lack CKA_TOKEN
    return list(conn.work.get_objects({Attribute.CLASS: cls}))


def _exact(conn: Connection, ident: dict[Any, Any]) -> list[Any]:
    key = replication.ident_key(ident)
    return [o for o in _objects_of_class(conn, ident.get(Attribute.CLASS))
            if replication.ident_key(replication.ident_of(o)) == key]


def list_half_made(conn: Connection) -> list[dict[Any, Any]]:
    """The identities of the :func:`half_made` objects on a member (worker)."""
    out = []
    for cls in (*KEY_CLASSES, ObjectClass.DATA):
        for obj in _objects_of_class(conn, cls):
            ident = replication.ident_of(obj)
            if half_made(ident) and ident not in out:
                out.append(ident)
    return out


def count_exactly(conn: Connection, ident: dict[Any, Any]) -> int:
    """How many objects have exactly the identity ``ident`` (worker)."""
    return len(_exact(conn, ident))


def destroy_exactly(conn: Connection, ident: dict[Any, Any]) -> int:
    """Destroy the objects whose identity is exactly ``ident`` (worker); unlike
    a search by template, an attribute ``ident`` lacks (a label never
    written) does not widen the match."""
    n = 0
    for obj in _exact(conn, ident):
        conn.destroy(obj)
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
        """True when the periodic retry should run now (asked before every call).

        The members are looked at once per period at most: when none needs
        anything, the next look is a period later (and the back-off ends).
        """
        if not self.conf.synchronize:
            return False
        now = self.clock()
        if now - self._last_sync <= self._sync_period:
            return False
        if self._login.logged_in and any(m.alive and m.needs_sync for m in self._members):
            return True
        self._last_sync, self._sync_period = now, self._interval
        return False

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
        """Synchronise when HASynchronize is set; else replay the destroys and
        attribute changes members missed, and measure (``needs_sync``).  A
        destroy a member missed (or the orphan of a generation that was made
        again elsewhere) must not live on there, whatever the sync setting."""
        if self.conf.synchronize:
            self.run()
        else:
            with self._sync_lock:
                started = time.monotonic()
                for m in self._members.serving():
                    self._replay_journal(m, started, False, [], [], [], set(),
                                         kinds=("destroy", "set"))
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
        journal = self._replicas.change_journal
        pending = {m.serial: bool(journal.pending(m.serial)) for m in self._members}
        out = []
        with self._members.lock:
            for m in self._members:
                if m.serial not in inv:
                    out.append(MemberInventory(m.serial, reachable=False,
                                               error=m.last_error or CKR.DEVICE_ERROR))
                    continue
                lacks = tuple(replication.summarize(*union[k][:2]) for k in missing[m.serial])
                m.needs_sync = bool(lacks) or bool(pending.get(m.serial))
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

    def synchronize(self, pin: str | None = None, *, adopt: bool = False,
                    dry_run: bool = False) -> SyncReport:
        """``hagroup synchronize``: bring every alive member up to date.

        1. The changes each member missed, from the group's durable journal, in
           order: destroys (a destroyed object never comes back), attribute
           changes, and objects created through the group while it was down
           (copied from a member that has them).
        2. Session objects made through the group, to members that lack them.
        3. Any other object some members hold and others lack is a *conflict*
           (made outside the group, or destroyed elsewhere while a member was
           down): reported in :attr:`SyncReport.conflicts`, copied only with
           ``adopt`` (lunacm's union: the administrator says it is wanted).

        Secret and private keys travel only wrapped under the transport key;
        public objects by value.  What cannot be copied is reported in
        :attr:`SyncReport.failed`, never hidden.  ``dry_run`` changes nothing
        and reports the plan.  Idempotent.  Needs a login, like
        :meth:`inventory_diff`; runs whatever the HASynchronize flag says.
        """
        with self._login.logged_in_for(pin, "synchronize"):
            return self.run(adopt=adopt, dry_run=dry_run)

    def run(self, *, adopt: bool = False, dry_run: bool = False) -> SyncReport:
        """One synchronisation (see :meth:`synchronize`); the group is logged in."""
        with self._sync_lock:
            started = time.monotonic()
            self._last_sync = self.clock()
            copied: list[tuple[str, ObjectSummary, str]] = []
            destroys: list[tuple[str, ObjectSummary]] = []
            failed: list[SyncFailure] = []
            work: set[str] = set()
            # 1. destroys and attribute changes made through the group while a
            #    member was down: nothing stale may serve a moment longer
            for m in self._members.serving():
                self._replay_journal(m, started, dry_run, copied, destroys, failed, work,
                                     kinds=("destroy", "set"))
            # 2. session objects made through the group: they exist nowhere else,
            #    so they go first (a recovered member that lacks them is one
            #    failure away from losing them)
            session_objs = [v for v in self._objects.replicable_session_objects()
                            if not self._replicas.destroyed_since(
                                replication.ident_key(v.ident), started)]
            for m in self._members.serving():
                for v in session_objs:
                    try:
                        if dry_run:
                            if m.serial not in v.real:
                                copied.append((m.serial, replication.summarize(v.ident), "-"))
                        elif self._replicas.replicate_one(v, m):
                            copied.append((m.serial, replication.summarize(v.ident), "-"))
                    except Exception as e:
                        if is_member_failure(e) and not m.alive:
                            break
                        failed.append(SyncFailure(m.serial, replication.summarize(v.ident),
                                                  ckr_name(e), getattr(e, "detail", "")))
            # 3. token objects created through the group while a member was down
            for m in self._members.serving():
                self._replay_journal(m, started, dry_run, copied, destroys, failed, work,
                                     kinds=("create",))
            # 4. half-made objects a member's failure left (not conflicts), then
            #    the token objects some members lack that nothing above explains
            self._remove_half_made(dry_run, destroys, failed)
            inv = self._inventories()
            union, missing = union_of(inv)
            conflicts: list[SyncConflict] = []
            explained = self._replicas.change_journal.explained_keys()
            for serial, keys in missing.items():
                m = self._members.get(serial)
                for k in keys:
                    ident, info, holders = union[k]
                    if k in explained or self._replicas.destroyed_since(k, started):
                        continue  # the journal (or a destroy just now) decides
                    summary = replication.summarize(ident, info)
                    if not adopt:
                        conflicts.append(SyncConflict(serial, summary, tuple(holders)))
                        continue
                    sources = [s for s in self._members if s.serial in holders and s.alive]
                    if dry_run:
                        copied.append((serial, summary, _how(ident)))
                        continue
                    try:
                        how = self._replicas.transfer(ident, m, sources, operation="synchronize")
                        copied.append((serial, summary, how))
                    except Exception as e:
                        if is_member_failure(e) and not m.alive:
                            break
                        failed.append(SyncFailure(serial, summary, ckr_name(e),
                                                  getattr(e, "detail", "")))
            report = SyncReport(self.label, tuple(copied), tuple(failed),
                                tuple(m.serial for m in self._members if m.serial not in inv),
                                len(destroys), tuple(conflicts), dry_run, tuple(destroys))
            if not dry_run:
                self._after_run(report, inv, work)
            return report

    def _remove_half_made(self, dry_run: bool, destroys: list[tuple[str, ObjectSummary]],
                          failed: list[SyncFailure]) -> None:
        """Destroy the half-made objects of members whose failure cut a creation.

        SoftHSM2 writes a new object to its token before its attributes; a
        member killed in between comes back holding an object without them
        (:func:`half_made`; often without ``CKA_TOKEN`` either, so no search
        for token objects finds it), which the group never makes.  Such an
        object, held by no other member whose failure did not cut a creation
        too, is removed and reported as destroyed (two members killed during
        two creations each come back with one, and they look alike: neither is
        evidence for the other).
        """
        for m in self._members.serving():
            if not m.creation_cut:
                continue
            found = self._members.best_effort(m, list_half_made, operation="C_FindObjects")
            if found is None:
                continue
            others = [o for o in self._members.serving() if o is not m and not o.creation_cut]
            unsure = False  # a member could not be asked: look again next time
            for ident in found:
                held = [self._members.best_effort(o, count_exactly, ident,
                                                  operation="C_FindObjects") for o in others]
                if None in held:
                    unsure = True
                    continue
                if any(held):
                    continue  # on another member too: not this cut's
                destroys.append((m.serial, replication.summarize(ident)))
                if dry_run:
                    continue
                try:
                    m.run(destroy_exactly, ident, operation="C_DestroyObject")
                except Exception as e:
                    if is_member_failure(e) and not m.alive:
                        break
                    failed.append(SyncFailure(m.serial, replication.summarize(ident),
                                              ckr_name(e), getattr(e, "detail", "")))
            else:
                # (kept while a count was unknown: clearing it then left a
                # half-made object on its member for good, soak finding)
                if not dry_run and not unsure:
                    m.creation_cut = False

    def _after_run(self, report: SyncReport, inv: dict[str, Inventory], work: set[str]) -> None:
        """``needs_sync``, the registry and the HA log after a synchronisation."""
        copied_to = {s for s, _o, _h in report.copied}
        failed_on: dict[str, str] = {}
        for f in report.failed:
            failed_on.setdefault(f.serial, f.ckr)
        lacking = {c.serial for c in report.conflicts}
        journal = self._replicas.change_journal
        pending = {m.serial: bool(journal.pending(m.serial)) for m in self._members}
        with self._members.lock:
            for m in self._members:
                if m.alive and m.serial in inv:
                    m.needs_sync = (m.serial in failed_on or m.serial in lacking
                                    or pending[m.serial])
                if m.serial in copied_to:
                    self._objects.present_on(m.serial)
        for m in self._members:
            if m.serial in copied_to or m.serial in failed_on or m.serial in work:
                self._log.event(self.label, m.serial, halog.SYNCHRONIZED,
                                failed_on.get(m.serial))

    def _replay_journal(self, m: Member, started: float, dry_run: bool,
                        copied: list[tuple[str, ObjectSummary, str]],
                        destroys: list[tuple[str, ObjectSummary]],
                        failed: list[SyncFailure], work: set[str],
                        kinds: tuple[str, ...] = ("destroy", "set", "create")) -> None:
        """Apply, in order, the changes ``m`` missed (from the durable journal).

        An entry is marked delivered once applied; one that cannot be applied
        now (its source is down, the member failed) stays for the next run.
        ``kinds``: which entries to apply (without HASynchronize only destroys
        and attribute changes: nothing stale may live on, but nothing is copied).
        """
        journal = self._replicas.change_journal
        entries = [e for e in journal.pending(m.serial) if e.kind in kinds]
        if not entries:
            return
        later_destroys = {e.key: e.seq for e in journal.entries() if e.kind == "destroy"}
        done: list[int] = []
        try:
            self._replay_entries(m, entries, later_destroys, started, dry_run, copied,
                                 destroys, failed, done)
        finally:
            # one write and fsync for the whole batch (replaying twice is harmless)
            if done and not dry_run:
                journal.delivered_many(done, m.serial)
                work.add(m.serial)

    def _replay_entries(self, m: Member, entries: list[Entry], later_destroys: dict[Any, int],
                        started: float, dry_run: bool,
                        copied: list[tuple[str, ObjectSummary, str]],
                        destroys: list[tuple[str, ObjectSummary]],
                        failed: list[SyncFailure], done: list[int]) -> None:
        for e in entries:
            ident = typed_ident(e.ident)
            summary = replication.summarize(ident)
            try:
                if e.kind == "destroy":
                    destroys.append((m.serial, summary))
                    if not dry_run:
                        m.run(destroy_matching, ident, operation="C_DestroyObject")
                elif e.kind == "set":
                    if not dry_run:
                        m.run(set_matching, ident, e.attrs or {},
                              operation="C_SetAttributeValue")
                elif e.kind == "create":
                    gone = (later_destroys.get(e.key, 0) > e.seq
                            or self._replicas.destroyed_since_created(e.key, started))
                    if not gone and not m.run(has_matching, ident,
                                              operation="C_FindObjects"):
                        sources = [s for s in self._members.serving() if s is not m]
                        if dry_run:
                            copied.append((m.serial, summary, _how(ident)))
                            continue
                        how = self._replicas.transfer(ident, m, sources,
                                                      operation="synchronize")
                        copied.append((m.serial, summary, how))
                        if self._replicas.destroyed_since_created(e.key, started):
                            # destroyed through the group while it was copied
                            m.run(destroy_matching, ident, operation="C_DestroyObject")
            except Exception as err:
                if is_member_failure(err) and not m.alive:
                    return  # the rest waits for the member's next recovery
                if e.kind == "create" and ckr_name(err) == CKR.DEVICE_ERROR:
                    if not all(x.alive for x in self._members):
                        continue  # a member holding it may be down: next run
                    # every member serves and none holds it: destroyed outside
                    # the group; nothing left to copy
                elif e.kind != "create" or not isinstance(err, NotOnMember):
                    failed.append(SyncFailure(m.serial, summary, ckr_name(err),
                                              getattr(err, "detail", "")))
                    continue
            done.append(e.seq)


def typed_ident(ident: dict[Any, Any]) -> dict[Any, Any]:
    """An identity read back from the journal, with python-pkcs11's enum types
    where it wants them (the file keeps plain numbers)."""
    out = dict(ident)
    for attr, enum in ((Attribute.CLASS, ObjectClass), (Attribute.KEY_TYPE, KeyType),
                       (Attribute.CERTIFICATE_TYPE, CertificateType)):
        value = out.get(attr)
        if isinstance(value, int) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                out[attr] = enum(value)
    return out


def _how(ident: dict[Any, Any]) -> str:
    """How an object of ``ident`` would travel (for a dry run's plan)."""
    return "wrap" if ident.get(Attribute.CLASS) in replication.SECRET_CLASSES else "value"


def set_matching(conn: Connection, ident: dict[Any, Any], attrs: dict[Any, Any]) -> int:
    """Set ``attrs`` on every object of identity ``ident`` on a member (worker thread)."""
    n = 0
    for obj in list(conn.work.get_objects(ident)):
        for k, v in attrs.items():
            obj[k] = v
        n += 1
    return n


def has_matching(conn: Connection, ident: dict[Any, Any]) -> bool:
    """True when the member holds an object of identity ``ident`` (worker thread)."""
    return bool(list(conn.work.get_objects(ident)))


__all__ = ["Synchronisation", "destroy_matching", "has_matching", "set_matching", "union_of"]
