"""Objects made through a group exist on every member; what a member missed is journaled.

Created once, then copied to every other alive member: by running the same
deterministic call there (*replay*: create, copy, unwrap, derive) or by
copying the object (:meth:`Replicas._transfer`: secret and private keys
wrapped under the transport key, public objects by value; see docs/engine.md,
"Replication").  Destroys and attribute changes go to
every member and are journaled for members that are down.  What runs on a
member's worker (export, import, identities) is in :mod:`hacli.engine.replication`.

Every change a member misses (it is down, or the copy failed) is written to
the group's durable :class:`~hacli.engine.journal.ChangeJournal` before the
call returns: token objects created, destroyed or changed.  Synchronisation
replays it (sync.py), so a destroyed object never comes back, even after the
process ended with members down.  Destroys also leave an in-memory tombstone,
so a synchronisation running at the same time does not copy the object back.

Collaborators: the group's :class:`~hacli.engine.members.MemberSet`, its
:class:`~hacli.engine.objects.ObjectRegistry`, its
:class:`~hacli.engine.execution.Executor` and its journal (opened on first use).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import pkcs11
from pkcs11 import Attribute

from hacli.engine import replication
from hacli.engine.ckr import CKR, ckr_name, is_member_failure
from hacli.engine.exceptions import CKRError, request_error
from hacli.engine.execution import Executor
from hacli.engine.journal import ChangeJournal
from hacli.engine.member import Connection, Member
from hacli.engine.members import MemberSet
from hacli.engine.objects import NotOnMember, ObjectRegistry, VObject
from hacli.engine.replication import ident_key, ident_of

#: How long a destroy's tombstone is kept (a synchronisation that started
#: before the destroy is over well within it).
TOMBSTONE_SECONDS = 600.0


class Replicas:
    """Creating, copying, destroying and changing objects on every member."""

    def __init__(self, members: MemberSet, objects: ObjectRegistry, executor: Executor,
                 journal: Callable[[], ChangeJournal]):
        self._members = members
        self._objects = objects
        self._executor = executor
        self._journal = journal
        self._tomb_lock = threading.Lock()
        self._tombstones: dict[Any, float] = {}  # ident key -> monotonic time of the destroy
        # identity key -> monotonic time this process journaled a creation of
        # it (a destroy of one of them cancels what is still waiting)
        self._created: dict[Any, float] = {}

    @property
    def change_journal(self) -> ChangeJournal:
        """The group's durable journal of missed changes."""
        return self._journal()

    def destroyed_since(self, key: Any, since: float) -> bool:
        """True when an object of identity ``key`` was destroyed through the group
        at or after ``since`` (``time.monotonic``)."""
        with self._tomb_lock:
            t = self._tombstones.get(key)
        return t is not None and t >= since

    def destroyed_since_created(self, key: Any, default: float) -> bool:
        """True when the object ``key`` whose creation a member missed was
        destroyed through the group after that creation was journaled (by
        this process; else after ``default``, e.g. the start of a sync).

        Measured from the creation, not from the start of the sync that asks:
        a destroy that came just before the sync started may not have
        cancelled the waiting creation yet."""
        with self._tomb_lock:
            since = self._created.get(key, default)
        return self.destroyed_since(key, since)

    def _tombstone(self, key: Any) -> None:
        now = time.monotonic()
        with self._tomb_lock:
            self._tombstones[key] = now
            if len(self._tombstones) > 4096:
                self._tombstones = {k: t for k, t in self._tombstones.items()
                                    if now - t < TOMBSTONE_SECONDS}

    def record_missed(self, kind: str, ident: dict[Any, Any], attrs: dict[Any, Any] | None,
                      missed: Iterable[Member]) -> None:
        """Durably journal a change the ``missed`` members did not get (they need
        sync).  Returns once it is on disk: before the application is told."""
        serials = sorted({m.serial for m in missed})
        if not serials:
            return
        with self._members.lock:
            for m in self._members:
                if m.serial in serials:
                    m.needs_sync = True
        self._journal().record(kind, ident, attrs, serials)

    def _cancel_creations(self, key: Any) -> None:
        journal = self._journal()
        for e in journal.entries():
            if e.kind == "create" and e.key == key and e.pending:
                for serial in e.pending:
                    journal.delivered_many([e.seq], serial)

    def _missed_creation(self, vobjs: Sequence[VObject]) -> None:
        """Journal the token objects of ``vobjs`` for the members without a copy."""
        for v in vobjs:
            if v.is_token_object:
                missed = [m for m in self._members if m.serial not in v.real]
                if missed:
                    with self._tomb_lock:
                        self._created[ident_key(v.ident)] = time.monotonic()
                    self.record_missed("create", dict(v.ident), None, missed)

    def create(self, operation: str, fn: Callable[..., list[Any]], vobjs: Sequence[VObject] = (),
               owner: int | None = None, only: Member | None = None,
               replay: bool = False) -> list[VObject]:
        """Create objects on one member with ``fn(member, conn, *objs) -> [pkcs11 objects]``,
        register them, then replicate them to the other members: by running ``fn``
        there too (``replay``, for deterministic calls) or by copying (wrapped)."""
        cut: list[Member] = []  # members whose failure cut this creation

        def task(m: Member, conn: Connection, *objs: Any) -> tuple[Member, list[VObject]]:
            created = _creating(m, fn, conn, *objs, cut=cut)
            return m, [self._objects.register(m, conn, o, ident_of(o), owner) for o in created]

        for _attempt in range(len(self._members)):
            primary, out = self._executor.execute(operation, task, vobjs, only)
            self._orphans_of_cut_creations(out, cut, primary)
            if replay:
                self.replicate_replayed(out, primary, fn, vobjs, only)
                if only is None:
                    self._missed_creation(out)
                return out
            self.replicate_created(out, primary, only)
            if only is not None or len(self._members) == 1:
                return out
            if primary.alive or all(self._held_by_another_serving(v, primary) for v in out):
                self._missed_creation(out)
                return out
            # The member that made the objects failed before a member that
            # still serves got a copy of all of them (copies on members that
            # failed too are no use): as far as the application can tell, the
            # call failed on a member that went down.  Make them again on one
            # that serves; the orphans on the failed members are destroyed
            # when they return.
            for v in out:
                self._discard_copies(v, primary)
                if v.is_token_object:
                    self.record_missed("destroy", dict(v.ident), None, [primary])
                self._objects.forget(v)
        raise CKRError(CKR.DEVICE_ERROR, operation,
                       detail="every member that made the object failed before it was copied")

    def _held_by_another_serving(self, vobj: VObject, primary: Member) -> bool:
        """True when a member other than ``primary`` that is still alive holds ``vobj``."""
        for serial in list(vobj.real):  # a copy: another thread may map one meanwhile
            if serial != primary.serial and self._members.get(serial).alive:
                return True
        return False

    def _orphans_of_cut_creations(self, vobjs: Sequence[VObject], cut: list[Member],
                                  primary: Member) -> None:
        """The call that made ``vobjs`` on ``primary`` was tried first on the
        ``cut`` members, which failed during it.  One of them may have finished
        it: a *different* key under the same label and ID.  Its destroy is
        journaled before the new objects' creation, so when the member returns
        the replay removes the orphan, then copies the group's key."""
        for m in {id(m): m for m in cut if m is not primary}.values():
            for v in vobjs:
                if v.is_token_object:
                    self.record_missed("destroy", dict(v.ident), None, [m])
        cut.clear()

    def _discard_copies(self, vobj: VObject, primary: Member) -> None:
        """Destroy the copies of ``vobj`` already made on members other than
        ``primary`` (the objects are about to be made again, with the same
        identity: a copy left behind would outlive the new object's destroy).
        A member that fails meanwhile gets the destroy journaled, before the
        new object's creation, so its replay order is right."""
        for serial in [s for s in vobj.real if s != primary.serial]:
            m = self._members.get(serial)

            def drop(conn: Connection, m: Member = m) -> None:
                obj = self._objects.resolve(m, conn, vobj)
                conn.destroy(obj)

            try:
                m.run(drop, operation="C_DestroyObject")
            except NotOnMember:
                continue
            except Exception as e:
                if not is_member_failure(e):
                    raise
                self._members.mark_failed(m, e)
                if vobj.is_token_object:
                    self.record_missed("destroy", dict(vobj.ident), None, [m])

    def replicate_created(self, vobjs: Sequence[VObject], primary: Member,
                          only: Member | None) -> None:
        """Copy freshly created objects from ``primary`` to every other alive member."""
        for m in self._replica_targets(primary, only):
            for v in vobjs:
                try:
                    self.replicate_one(v, m, primary)
                except Exception as e:
                    with self._members.lock:
                        m.needs_sync = True
                    known = isinstance(e, CKRError | pkcs11.PKCS11Error)
                    if not is_member_failure(e) and not known:
                        raise
                    if not m.alive:
                        break

    def replicate_replayed(self, vobjs: Sequence[VObject], primary: Member,
                           fn: Callable[..., list[Any]], sources: Sequence[VObject],
                           only: Member | None) -> None:
        """Replicate by running the same deterministic call on every other alive
        member (create, copy, unwrap, derive): no key material leaves a member."""
        for m in self._replica_targets(primary, only):
            def task(conn: Connection, m: Member = m) -> None:
                objs = [self._objects.resolve(m, conn, v) for v in sources]
                made = _creating(m, fn, conn, *objs)
                if len(made) != len(vobjs):
                    raise CKRError(CKR.GENERAL_ERROR, "replicate", m.serial)
                for v, o in zip(vobjs, made, strict=True):
                    self._objects.map(m, conn, v, o)

            try:
                m.run(task, operation="replicate")
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(m, e)
                    continue
                with self._members.lock:
                    m.needs_sync = True
                if not isinstance(e, CKRError | pkcs11.PKCS11Error | NotOnMember):
                    raise

    def _replica_targets(self, primary: Member, only: Member | None) -> Iterator[Member]:
        """The members a new object is copied to: every other alive one, none for
        a session pinned to one member; members that are down need sync.  Lazy:
        a member is looked at when its turn comes (it may have failed meanwhile)."""
        if only is not None:
            return
        for m in self._members:
            if m is primary:
                continue
            if not m.alive:
                with self._members.lock:
                    m.needs_sync = True
                continue
            yield m

    def can_wrap(self, only: Member | None = None) -> bool:
        """True when every alive member can send and receive keys under the transport key."""
        with self._members.lock:
            conns = [m.conn for m in self._members.serving(only) if m.conn is not None]
        return all(replication.wrap_problem(c) is None for c in conns)

    def generation_mode(self, operation: str, only: Member | None = None) -> str:
        """How a secret or private key generated now reaches every member.

        ``"local"`` (a session pinned to one member, or a one-member group:
        nothing to replicate) or ``"wrap"`` (generated once, copied under the
        transport key).  Otherwise raises ``CKR_KEY_NOT_WRAPPABLE``: a
        sensitive key that could not be replicated would exist on one member
        only, which an HA group must never pretend to be safe.
        """
        if only is not None or len(self._members) == 1:
            return "local"
        with self._members.lock:
            conns = [(m, m.conn) for m in self._members if m.alive and m.conn is not None]
        for m, conn in conns:
            problem = replication.wrap_problem(conn)
            if problem is not None:
                raise CKRError(CKR.KEY_NOT_WRAPPABLE, operation, m.serial,
                               detail=f"member {m.serial} cannot receive keys wrapped under "
                                      f"the group transport key: {problem}; the key would "
                                      "exist on one member only")
        return "wrap"

    def transfer(self, ident: dict[Any, Any], dst: Member, sources: Sequence[Member],
                  vobj: VObject | None = None, operation: str = "replicate") -> str:
        """Copy the object ``ident`` from one of ``sources`` to ``dst``.

        Returns how it travelled: ``"wrap"`` (a secret or private key, under
        the transport key) or ``"value"`` (public objects: their attributes).
        The rule (docs/engine.md, "Replication"): secret and private keys travel
        only wrapped, never in the clear.  Raises :class:`CKRError` when the
        object may not or cannot be copied, and the member failure when a
        member fails (it is marked down).
        """
        cls = ident.get(Attribute.CLASS)
        last: BaseException | None = None
        for s in sources:
            how = "value"
            if s.conn is None:
                continue  # went down since it was chosen: another source, or none
            if dst.conn is None:
                raise CKRError(CKR.DEVICE_ERROR, operation, dst.serial,
                               detail="the member is not connected")
            if cls in replication.SECRET_CLASSES:
                problem = replication.wrap_problem(s.conn)
                who = s
                if problem is None:
                    problem, who = replication.wrap_problem(dst.conn), dst
                if problem is not None:
                    raise CKRError(CKR.KEY_NOT_WRAPPABLE, operation, dst.serial,
                                   detail=f"secret and private keys travel only wrapped under "
                                          f"the group transport key, and member {who.serial} "
                                          f"cannot: {problem}")
                how = "wrap"
            def export(conn: Connection, s: Member = s, how: str = how) -> dict[str, Any]:
                obj = (self._objects.resolve(s, conn, vobj) if vobj is not None
                       else replication.find_first(conn, ident))
                if obj is None:
                    raise NotOnMember()
                return replication.export(conn, obj, cls, how)

            try:
                data = s.run(export, operation="C_WrapKey" if how == "wrap"
                             else "C_GetAttributeValue")
            except NotOnMember as e:
                last = e
                continue
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(s, e)
                    last = e
                    continue
                name = ckr_name(e)
                if name in (CKR.KEY_UNEXTRACTABLE, CKR.KEY_NOT_WRAPPABLE):
                    if vobj is not None:
                        vobj.replicable = False
                    raise CKRError(name, operation, s.serial,
                                   detail="the key may not leave its member (not "
                                          "extractable): it cannot be copied") from None
                raise request_error(e, operation, s.serial) from None

            # the copy carries exactly the identity asked for, even when a read
            # of the source's attributes came back short (an attribute that
            # could not be read is skipped there): never an unlabelled copy
            data["attrs"].update(ident)

            def load(conn: Connection, data: dict[str, Any] = data) -> None:
                obj = _creating(dst, lambda _m, c: replication.import_(c, data), conn)
                if vobj is not None:
                    self._objects.map(dst, conn, vobj, obj)

            try:
                dst.run(load, operation="C_UnwrapKey" if how == "wrap" else "C_CreateObject")
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(dst, e)
                    raise
                raise request_error(e, operation, dst.serial) from None
            finally:
                data = {}  # drop the only reference to the wrapped blob
            return how
        raise CKRError(CKR.DEVICE_ERROR, operation, dst.serial,
                       detail="no member holding the object is available") from last

    def replicate_one(self, vobj: VObject, dst: Member, src: Member | None = None) -> bool:
        """Make ``vobj`` exist on ``dst`` (no-op when it does).  True if copied."""
        try:
            dst.run(lambda conn: self._objects.resolve(dst, conn, vobj), operation="C_FindObjects")
            return False
        except NotOnMember:
            pass
        except Exception as e:
            if is_member_failure(e):
                self._members.mark_failed(dst, e)
            raise
        # ``src`` first (it made the object), then any other alive holder: a
        # source that fails during the copy must not leave ``dst`` without
        # the object while another member could still give it
        holders = [m for m in self._members
                   if m.alive and m is not dst and m is not src and m.serial in vobj.real]
        sources = [src, *holders] if src is not None else holders
        self.transfer(vobj.ident, dst, sources, vobj)
        return True

    def destroy(self, vobj: VObject, only: Member | None = None) -> None:
        """Destroy an object on every member (journaled for members that are down)."""
        def task(m: Member, conn: Connection, obj: Any) -> None:
            conn.destroy(obj)

        if only is None:
            # before the first member destroys it: a synchronisation running
            # now must not copy it back from a member it has not reached yet
            # (the tombstone), and one starting from now on must not find its
            # creation still waiting for a member that missed it (cancelled)
            key = ident_key(vobj.ident)
            self._tombstone(key)
            if vobj.is_token_object and key in self._created:
                self._cancel_creations(key)
        self._executor.on_each("C_DestroyObject", task, vobj, only)
        if only is None and vobj.is_token_object:
            self.record_missed("destroy", dict(vobj.ident), None,
                               [m for m in self._members if not m.alive])
        self._objects.forget(vobj)

    def set_on(self, m: Member, conn: Connection, vobj: VObject, attrs: dict[Any, Any]) -> None:
        obj = self._objects.resolve(m, conn, vobj)
        for k, v in attrs.items():
            obj[k] = v

    def set_attributes(self, vobj: VObject, attrs: dict[Any, Any],
                       only: Member | None = None) -> None:
        """Set attributes on every member (journaled for members that are down)."""
        def task(m: Member, conn: Connection, obj: Any) -> None:
            for k, v in attrs.items():
                obj[k] = v

        before = dict(vobj.ident)
        self._executor.on_each("C_SetAttributeValue", task, vobj, only)
        with self._members.lock:
            self._objects.relabel(vobj, attrs)
        if only is None and vobj.is_token_object:
            # the members that missed it still know the object by its old identity
            self.record_missed("set", before, dict(attrs),
                               [m for m in self._members if not m.alive])


def _creating(m: Member, fn: Callable[..., Any], conn: Connection, *objs: Any,
              cut: list[Member] | None = None) -> Any:
    """``fn(m, conn, *objs)``, a call that creates objects on ``m``; a member
    failure during it flags ``m`` (``creation_cut``) and is noted in ``cut``."""
    try:
        return fn(m, conn, *objs)
    except BaseException as e:
        if is_member_failure(e):
            m.creation_cut = True
            if cut is not None:
                cut.append(m)
        raise


__all__ = ["Replicas"]
