"""An HA group: several member tokens behind one virtual slot.

:class:`HAGroup` does balancing, failover, recovery and replication; the
application talks to it through :class:`~hacli.engine.session.VirtualSession`
objects.  Virtual object handles map to one real handle per member; real
handles and sessions come and go behind them (see docs/engine.md).

Locking: ``self._lock`` guards member state, counters and the object registry
and is never held while calling into a member; calls into a member are
serialised by its module instance's worker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.defaults import DEFAULT_KEY_CAPABILITIES

from hacli.conf.model_types import GroupConf, HASettings
from hacli.engine import halog, multipart, replication
from hacli.engine.ckr import ckr_name, is_member_failure
from hacli.engine.exceptions import CKRError, GroupDownError, ModuleUnavailable
from hacli.engine.member import (
    MAPPER,
    Connection,
    Member,
    MemberState,
    open_connection,
)
from hacli.engine.module import InstanceRegistry
from hacli.engine.multipart import MultiPart
from hacli.engine.policy import Clock, RecoveryPolicy
from hacli.engine.types import (
    GroupStatus,
    InventoryDiff,
    MemberInventory,
    MemberStatus,
    ObjectSummary,
    SyncFailure,
    SyncReport,
    TokenInfo,
)

WRAP_MECHANISM = replication.WRAP_MECHANISM
#: Errors after which the shared work session may still have an operation active.
_LEAVES_OPERATION_ACTIVE = ("CKR_BUFFER_TOO_SMALL", "CKR_OPERATION_ACTIVE")


class _Secret:
    """Holds the user PIN for re-login after recovery; never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


_BYTES_LITERAL = re.compile(r"""(?:b|bytearray\()(['"]).*?(?<!\\)\1\)?""", re.DOTALL)


def _safe_detail(e: BaseException) -> str:
    """A Python error's message for a CKRError, with any bytes literal (which
    could be key material from a template) cut out, and short."""
    text = _BYTES_LITERAL.sub("<bytes>", str(e))
    return text if len(text) <= 160 else text[:157] + "..."


class _NotOnMember(Exception):
    """The object does not exist on this member (try another one)."""


@dataclass(eq=False)
class VObject:
    """A virtual object: one identity, one real handle per member."""

    handle: int
    ident: dict[Any, Any]
    cls: Any
    owner: int | None = None  # virtual session owning a session object
    real: dict[str, tuple[int, int]] = field(default_factory=dict)  # serial -> (conn id, handle)
    #: serial -> conn id on which the object was looked for and is absent
    absent: dict[str, int] = field(default_factory=dict)
    replicable: bool = True

    @property
    def is_token_object(self) -> bool:
        return bool(self.ident.get(Attribute.TOKEN, False))


# kept here for the modules that import them from the group
_read_attrs = replication.read_attrs
_ident_of = replication.ident_of
_WRAPPED_CLASSES = replication.SECRET_CLASSES


def _capability_attrs(cls: Any, caps: int) -> dict[Any, bool]:
    from pkcs11.constants import MechanismFlag as F

    table = {
        ObjectClass.SECRET_KEY: {Attribute.ENCRYPT: F.ENCRYPT, Attribute.DECRYPT: F.DECRYPT,
                                 Attribute.SIGN: F.SIGN, Attribute.VERIFY: F.VERIFY,
                                 Attribute.WRAP: F.WRAP, Attribute.UNWRAP: F.UNWRAP,
                                 Attribute.DERIVE: F.DERIVE},
        ObjectClass.PUBLIC_KEY: {Attribute.ENCRYPT: F.ENCRYPT, Attribute.VERIFY: F.VERIFY,
                                 Attribute.WRAP: F.WRAP},
        ObjectClass.PRIVATE_KEY: {Attribute.DECRYPT: F.DECRYPT, Attribute.SIGN: F.SIGN,
                                  Attribute.UNWRAP: F.UNWRAP, Attribute.DERIVE: F.DERIVE},
    }[cls]
    return {a: bool(caps & flag) for a, flag in table.items()}


def _ha_key_attrs(template: dict[Any, Any], operation: str) -> dict[Any, Any]:
    """Secret and private keys made through a group must be replicable under the
    transport key only: extractable, but only wrapped by a trusted key."""
    if template.get(Attribute.EXTRACTABLE) is False:
        raise CKRError("CKR_TEMPLATE_INCONSISTENT", operation,
                       detail="keys of an HA group must be replicable (CKA_EXTRACTABLE "
                              "is set, restricted by CKA_WRAP_WITH_TRUSTED)")
    out = dict(template)
    out[Attribute.EXTRACTABLE] = True
    out[Attribute.WRAP_WITH_TRUSTED] = True
    return out


class HAGroup:
    """The virtual slot of one HA group (built by :class:`~hacli.engine.Engine`).

    Thread-safe: any number of application threads may use one group.
    """

    def __init__(self, conf: GroupConf, members: Sequence[Member], *, settings: HASettings,
                 registry: InstanceRegistry, all_members: Callable[[], Iterable[Member]],
                 log: halog.HALog | halog.NullLog, ids: itertools.count[int],
                 clock: Clock = time.monotonic, slot_id: int | None = None):
        self.conf = conf
        self.label = conf.label
        self.serial = conf.serial
        self.slot_id = slot_id
        self.members: tuple[Member, ...] = tuple(members)
        self.settings = settings
        self.timeout = max(0.001, settings.receive_timeout_ms / 1000.0)
        self.policy = RecoveryPolicy(settings.reconn_att, settings.auto_reconnect_interval, clock)
        self.clock = clock
        self._registry = registry
        self._all_members = all_members
        self._log = log
        self._ids = ids
        self._lock = threading.RLock()
        self._recover_lock = threading.Lock()
        self._rr = 0
        self._pin: _Secret | None = None
        self._objects: dict[int, VObject] = {}
        self._by_real: dict[tuple[str, int, int], VObject] = {}
        self._by_ident: dict[Any, list[VObject]] = {}
        self._sessions: dict[int, Any] = {}
        self._stop = threading.Event()
        self._bg: threading.Thread | None = None
        self._last_sync = clock()
        #: key values kept for members that lack keys generated by value
        self._escrow = replication.Escrow()
        self._sync_lock = threading.Lock()
        self._sync_period = self.policy.interval

    def __repr__(self) -> str:
        alive = sum(m.alive for m in self.members)
        return f"<HAGroup {self.label} serial={self.serial} {alive}/{len(self.members)} alive>"

    # ------------------------------------------------------------------
    # start / stop
    def start(self) -> None:
        """Connect every member (in parallel, each bounded by the timeout)."""
        threads = [threading.Thread(target=self._initial_connect, args=(m,), daemon=True)
                   for m in self.members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.settings.recovery_mode == "activeEnhanced":
            self._bg = threading.Thread(target=self._background, daemon=True,
                                        name=f"hacli-recovery-{self.label}")
            self._bg.start()

    def _initial_connect(self, m: Member) -> None:
        try:
            self._connect(m)
        except Exception as e:
            self._mark_failed(m, e)

    def forget_secrets(self) -> None:
        """Drop every key value and the PIN this group holds (engine close)."""
        self._escrow.clear()
        self._pin = None

    def end_operations(self) -> None:
        """End the multi-part operations of every session (engine close), so
        no helper thread is left parked in an operation."""
        for vs in self.sessions():
            with contextlib.suppress(Exception):
                vs._abort_operations()

    def stop(self) -> None:
        """Stop the background recovery thread (if any)."""
        self._stop.set()
        if self._bg is not None:
            self._bg.join(5.0)
            self._bg = None

    def _background(self) -> None:
        # activeEnhanced: run the same policy without application calls.
        period = max(0.05, min(0.5, self.policy.interval / 4.0))
        while not self._stop.wait(period):
            with contextlib.suppress(Exception):
                self.recovery_tick()

    # ------------------------------------------------------------------
    # members: connect, fail, recover
    def _connect(self, m: Member) -> None:
        """(Re)connect one member: instance, sessions, login.  Raises on failure."""
        loc = m.location
        if loc is None:
            raise CKRError("CKR_TOKEN_NOT_PRESENT", "connect", m.serial,
                           detail="no module location configured for this member")
        inst = self._registry.current(loc.library, loc.env, m.serial)
        if inst.lib is None:
            inst.load(self.timeout)
        elif inst is m.instance or m.instance is None:
            peers = [o for o in self._all_members()
                     if o is not m and o.alive and o.conn is not None and o.conn.instance is inst]
            if not peers and m.instance is not None:
                inst.reinitialize(self.timeout)
        pin = self._pin.get() if self._pin is not None else None
        conn = inst.call(open_connection, inst, m.serial, pin, timeout=self.timeout,
                         operation="C_OpenSession")
        with self._lock:
            m.instance = inst
            m.conn = conn
            m.state = MemberState.ALIVE
            m.down_since = None
            m.failure_reported = False
            m.last_error = None
        self.policy.member_up(m.serial)

    def _mark_failed(self, m: Member, error: BaseException | str) -> None:
        ckr = ckr_name(error)
        with self._lock:
            if m.state is MemberState.DOWN and m.conn is None and m.last_error is not None:
                return
            m.state = MemberState.DOWN
            m.conn = None
            m.down_since = self.clock()
            m.failure_reported = False
            m.last_error = ckr
            m.failures += 1
            for vs in self._sessions.values():
                vs._member_failed(m)
        self.policy.member_down(m.serial)
        self._log.event(self.label, m.serial, halog.FAILED, ckr)

    def recovery_tick(self) -> bool:
        """The origin pseudo-code; run before every call through the group.

        Returns True when a member was recovered.
        """
        if not self.policy.disconnected and not self._sync_due():
            return False
        if not self._recover_lock.acquire(blocking=False):
            return False  # another thread is recovering right now
        try:
            serial = self.policy.due()
            if serial is None:
                if self._sync_due():
                    self._sync_all()
                return False
            m = self._member(serial)
            ok = self._recover(m)
            self.policy.record(serial, ok)
            return ok
        finally:
            self._recover_lock.release()

    def _recover(self, m: Member) -> bool:
        try:
            self._connect(m)
        except Exception as e:
            self._log.event(self.label, m.serial, halog.RECOVERY_FAILED, ckr_name(e))
            with self._lock:
                m.conn = None
                m.state = MemberState.DOWN
            return False
        m.recoveries += 1
        self._log.event(self.label, m.serial, halog.RECOVERED, None)
        self._after_recovery(m)
        return True

    def recover_now(self, serial: str | None = None) -> bool:
        """Attempt recovery of one down member immediately (``hagroup recover``)."""
        with self._recover_lock:
            down = self.policy.disconnected
            if serial is None:
                if not down:
                    return False
                serial = min(down.items(), key=lambda kv: kv[1])[0]
            m = self._member(serial)
            if m.alive:
                return True
            ok = self._recover(m)
            self.policy.record(m.serial, ok)
            return ok

    def _member(self, serial: Any) -> Member:
        for m in self.members:
            if m.serial == serial:
                return m
        raise CKRError("CKR_ARGUMENTS_BAD", "member", str(serial),
                       detail="not a member of this group")

    # ------------------------------------------------------------------
    # synchronisation (HASynchronize)
    #
    # Members are compared by an *inventory* of their token objects (keys,
    # certificates, data objects; by class, CKA_ID, CKA_LABEL, key type); the
    # union is the target.  Automatic runs (after login, after a recovery, and
    # every X s while an alive member needs sync) happen only when the group's
    # HASynchronize flag is set and the group is logged in (private objects are
    # invisible otherwise); without the flag, login and recovery still take an
    # inventory so that ``needs_sync`` is right, but copy nothing.
    @property
    def sync_enabled(self) -> bool:
        """``HASynchronize`` for this group: automatic synchronisation."""
        return bool(self.conf.synchronize)

    def _sync_due(self) -> bool:
        return (self.conf.synchronize and self._pin is not None
                and any(m.alive and m.needs_sync for m in self.members)
                and self.clock() - self._last_sync > self._sync_period)

    def _sync_all(self) -> None:
        # periodic retry; backs off while nothing can be copied (e.g. a
        # sensitive key that no member can wrap), from X s up to an hour
        try:
            report = self._synchronize()
        except Exception:
            report = None
        if report is not None and (report.copied or report.destroyed):
            self._sync_period = self.policy.interval
        else:
            self._sync_period = min(max(self._sync_period, 1.0) * 2, 3600.0)

    def _after_recovery(self, m: Member) -> None:
        """A member is back: catch it up (HASynchronize) or at least measure."""
        if self._pin is None:
            return  # private objects are invisible: needs_sync stays as it is
        try:
            if self.conf.synchronize:
                self._synchronize()
            else:
                self._refresh_needs_sync()
        except Exception as e:
            if is_member_failure(e) and m.alive:
                self._mark_failed(m, e)

    def _after_login(self) -> None:
        try:
            if self.conf.synchronize:
                self._synchronize()
            else:
                self._refresh_needs_sync()
        except Exception:  # never fails the login; needs_sync stays as it was
            pass

    def _ensure_login(self, pin: str | None, operation: str) -> bool:
        """Log in for an inventory if needed; True when this call logged in."""
        if self._pin is not None:
            return False
        if pin is None:
            raise CKRError("CKR_USER_NOT_LOGGED_IN", operation,
                           detail="comparing members needs the user PIN: private objects "
                                  "are invisible without a login")
        self._login(pin)
        return True

    def _inventories(self) -> dict[str, list[tuple[dict[Any, Any], dict[Any, Any]]]]:
        """Token objects of every alive member (in parallel, each bounded)."""
        found: dict[str, list[tuple[dict[Any, Any], dict[Any, Any]]]] = {}

        def one(m: Member) -> None:
            try:
                found[m.serial] = m.run(replication.list_token_objects,
                                        operation="C_FindObjects")
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)

        threads = [threading.Thread(target=one, args=(m,), daemon=True)
                   for m in self.members if m.alive]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return found

    @staticmethod
    def _union(inv: dict[str, list[tuple[dict[Any, Any], dict[Any, Any]]]]
               ) -> tuple[dict[Any, tuple[dict[Any, Any], dict[Any, Any], list[str]]],
                          dict[str, list[Any]]]:
        union: dict[Any, tuple[dict[Any, Any], dict[Any, Any], list[str]]] = {}
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

    def _refresh_needs_sync(self) -> InventoryDiff:
        inv = self._inventories()
        union, missing = self._union(inv)
        out = []
        with self._lock:
            for m in self.members:
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
        self.recovery_tick()
        logged_here = self._ensure_login(pin, "inventory")
        try:
            return self._refresh_needs_sync()
        finally:
            if logged_here:
                self.logout()

    def synchronize(self, pin: str | None = None) -> SyncReport:
        """``hagroup synchronize``: copy every token object a member lacks from a
        member that has it (and replay destroys/attribute changes members missed).

        Secret and private keys travel wrapped under the transport key, or by
        value only under ReplicateByValue (and only if readable or in the
        escrow); public objects by value.  What cannot be copied is reported in
        :attr:`SyncReport.failed`, never hidden.  Idempotent.  Needs a login,
        like :meth:`inventory_diff`; runs whatever the HASynchronize flag says.
        """
        self.recovery_tick()
        logged_here = self._ensure_login(pin, "synchronize")
        try:
            return self._synchronize()
        finally:
            if logged_here:
                self.logout()

    def _synchronize(self) -> SyncReport:
        with self._sync_lock:
            self._last_sync = self.clock()
            copied: list[tuple[str, ObjectSummary, str]] = []
            failed: list[SyncFailure] = []
            destroyed = 0
            work: set[str] = set()
            # 1. changes made through the group while a member was down
            for m in [m for m in self.members if m.alive]:
                n = self._replay_journal(m)
                if n:
                    destroyed += n
                    work.add(m.serial)
            # 2. session objects made through the group (token objects: step 3)
            with self._lock:
                session_objs = [v for v in self._objects.values()
                                if not v.is_token_object and v.replicable]
            for m in [m for m in self.members if m.alive]:
                for v in session_objs:
                    try:
                        if self._replicate(v, m):
                            copied.append((m.serial, replication.summarize(v.ident), "-"))
                    except Exception as e:
                        if is_member_failure(e) and not m.alive:
                            break
                        failed.append(SyncFailure(m.serial, replication.summarize(v.ident),
                                                  ckr_name(e), getattr(e, "detail", "")))
            # 3. token objects: the union of the members' inventories
            inv = self._inventories()
            union, missing = self._union(inv)
            for serial, keys in missing.items():
                m = self._member(serial)
                for k in keys:
                    ident, info, holders = union[k]
                    summary = replication.summarize(ident, info)
                    sources = [s for s in self.members if s.serial in holders and s.alive]
                    try:
                        how = self._transfer(ident, m, sources, operation="synchronize")
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
            with self._lock:
                for m in self.members:
                    if m.alive and m.serial in inv:
                        m.needs_sync = m.serial in failed_on or bool(m.journal)
                    if m.serial in copied_to:
                        for v in self._objects.values():
                            v.absent.pop(m.serial, None)
                unreachable = tuple(m.serial for m in self.members if m.serial not in inv)
            for m in self.members:
                if m.serial in copied_to or m.serial in failed_on or m.serial in work:
                    self._log.event(self.label, m.serial, halog.SYNCHRONIZED,
                                    failed_on.get(m.serial))
            return SyncReport(self.label, tuple(copied), tuple(failed), unreachable, destroyed)

    def _replay_journal(self, m: Member) -> int:
        """Apply destroys/attribute changes ``m`` missed; returns destroys done."""
        with self._lock:
            journal, m.journal = m.journal, []
        done = 0
        for i, entry in enumerate(journal):
            kind, ident, attrs = entry
            try:
                if kind == "destroy":
                    done += m.run(self._destroy_matching, ident, operation="C_DestroyObject")
                elif kind == "set":
                    vobj = self._objects.get(ident)
                    if vobj is not None:
                        m.run(lambda conn, v=vobj, a=attrs: self._set_on(m, conn, v, a),
                              operation="C_SetAttributeValue")
            except _NotOnMember:
                pass
            except Exception as e:
                if is_member_failure(e):
                    with self._lock:
                        m.journal = journal[i:] + m.journal
                    self._mark_failed(m, e)
                    return done
        return done

    @staticmethod
    def _destroy_matching(conn: Connection, ident: dict[Any, Any]) -> int:
        n = 0
        for obj in list(conn.work.get_objects(ident)):
            obj.destroy()
            conn.objects.pop(obj.handle, None)
            n += 1
        return n

    # ------------------------------------------------------------------
    # balancing and execution
    def _pick(self, tried: set[Member], only: Member | None,
              vobjs: Sequence[VObject] = ()) -> Member | None:
        with self._lock:
            cands = [(i, m) for i, m in enumerate(self.members)
                     if m.alive and m.conn is not None and m not in tried
                     and (only is None or m is only)
                     and not any(v.absent.get(m.serial) == m.conn.id for v in vobjs)]
            if not cands:
                return None
            n = len(self.members)
            # least busy; on a tie the next one after the last pick (round robin)
            low = min(m.in_flight for _, m in cands)
            best = min((c for c in cands if c[1].in_flight == low),
                       key=lambda c: (c[0] - self._rr) % n)
            self._rr = (best[0] + 1) % n
            best[1].in_flight += 1
            return best[1]

    def _done(self, m: Member, ok: bool) -> None:
        with self._lock:
            m.in_flight -= 1
            if ok:
                m.ops += 1

    def _request_error(self, e: BaseException, operation: str, m: Member | None) -> BaseException:
        if isinstance(e, CKRError):
            return e
        if isinstance(e, pkcs11.PKCS11Error):
            err = CKRError(ckr_name(e), operation, m.serial if m else None)
            err.__cause__ = e
            return err
        if isinstance(e, AttributeError):
            # python-pkcs11 objects lack e.g. .sign when the key may not sign
            return CKRError("CKR_KEY_FUNCTION_NOT_PERMITTED", operation)
        if isinstance(e, TypeError | ValueError):
            return CKRError("CKR_ARGUMENTS_BAD", operation, detail=_safe_detail(e))
        return e

    def execute(self, operation: str, fn: Callable[..., Any], vobjs: Sequence[VObject] = (),
                only: Member | None = None) -> Any:
        """Run ``fn(member, conn, *real_objects)`` on one member, failing over.

        The recovery policy runs first.  Member failures mark the member down
        and the call moves on; request errors go straight to the caller.
        """
        self.recovery_tick()
        tried: set[Member] = set()
        missing = failed = False
        while True:
            m = self._pick(tried, only, vobjs)
            if m is None:
                if vobjs and not failed and not any(
                        m.alive and all(v.absent.get(m.serial) != m.conn.id for v in vobjs)
                        for m in self.members if m.conn is not None):
                    missing = True
                if missing and not failed:
                    keys = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
                    code = ("CKR_KEY_HANDLE_INVALID" if any(v.cls in keys for v in vobjs)
                            else "CKR_OBJECT_HANDLE_INVALID")
                    raise CKRError(code, operation)
                raise GroupDownError(operation, self.label)
            ok = False
            try:
                def task(conn: Connection, m: Member = m) -> Any:
                    objs = [self._resolve(m, conn, v) for v in vobjs]
                    try:
                        return fn(m, conn, *objs)
                    except pkcs11.PKCS11Error as e:
                        if ckr_name(e) in _LEAVES_OPERATION_ACTIVE:
                            conn.rotate_work_session()
                        raise

                result = m.run(task, operation=operation)
                ok = True
                return result
            except _NotOnMember:
                tried.add(m)
                missing = True
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)
                    tried.add(m)
                    failed = True
                    continue
                raise self._request_error(e, operation, m) from e
            finally:
                self._done(m, ok)

    # ------------------------------------------------------------------
    # multi-part operations (see hacli.engine.multipart)
    def begin_operation(self, operation: str, kind: str, vobj: VObject | None,
                        mechanism: Any, param: Any, only: Member | None = None) -> MultiPart:
        """``C_xInit`` on the member the balancer picks (failing over while none
        has started); the operation stays on that member until it ends."""
        def task(m: Member, conn: Connection, *objs: Any) -> MultiPart:
            session = multipart.take_session(conn)
            try:
                target = (multipart.key_on(session, vobj.ident, objs[0].handle)
                          if vobj is not None else session)
                op = MultiPart(kind, m, conn, session,
                               key_handle=vobj.handle if vobj is not None else None)
                if kind == "verify":
                    length = multipart.signature_length(target, mechanism)
                    if length is None:
                        # signature length unknown: keep the chunks, run the whole
                        # operation at verify_final (still C_VerifyInit/Update/Final)
                        op.deferred = []
                        op.deferred_args = (mechanism, param)
                        multipart.give_back(conn, session)
                        return op
                    op.sigbuf = bytearray(length)
                op.driver = multipart.StepDriver(
                    multipart.body_for(kind, target, mechanism, param, op.sigbuf),
                    name=f"hacli-op-{kind}-{m.serial}")
                op.driver.start()
                return op
            except BaseException:
                multipart.drop_session(session)
                raise

        return self.execute(operation, task, [vobj] if vobj is not None else [], only)

    def step_operation(self, op: MultiPart, operation: str,
                       action: Callable[[MultiPart], Any]) -> Any:
        """Run one step of ``op`` (``action(op)`` on its member's worker).

        A member that failed since the operation began (or fails now) gives
        ``CKR_DEVICE_ERROR``: the operation is over, the session can start a
        new one (on a member that serves).
        """
        self.recovery_tick()
        m = op.member
        with self._lock:
            if op.dead is None and (m.conn is not op.conn or not m.alive):
                op.dead = "CKR_DEVICE_ERROR"
            dead = op.dead
            if dead is None:
                m.in_flight += 1
        if dead is not None:
            raise CKRError(dead, operation, m.serial,
                           detail="the member serving this multi-part operation failed")
        ok = False

        def task(conn: Connection) -> Any:
            if conn is not op.conn:
                raise ModuleUnavailable(m.serial, "connection replaced")
            return action(op)

        try:
            result = m.run(task, operation=operation)
            ok = True
            return result
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(m, e)
                with self._lock:
                    op.dead = "CKR_DEVICE_ERROR"
                raise CKRError("CKR_DEVICE_ERROR", operation, m.serial,
                               detail="the member serving this multi-part operation "
                                      "failed") from e
            raise self._request_error(e, operation, m) from e
        finally:
            self._done(m, ok)

    def abort_operation(self, op: MultiPart) -> None:
        """End ``op`` early on its member (never raises)."""
        if op.driver is None or op.driver.done:
            return
        m = op.member
        with self._lock:
            live = op.dead is None and m.conn is op.conn and m.alive
        if not live:
            return  # _member_failed queued the abort already

        def task(conn: Connection) -> None:
            if conn is op.conn and op.driver is not None:
                op.driver.abort()
                multipart.drop_session(op.session)

        try:
            m.run(task, operation="C_xFinal")
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(m, e)

    def operation_member_failed(self, op: MultiPart) -> None:
        """``op``'s member was marked down (group lock held): end it there.

        The abort is queued on the member's worker behind the calls already
        queued (before any recovery re-initialises the module); nothing is
        queued when the instance was abandoned (see hacli.engine.multipart).
        """
        op.dead = op.dead or "CKR_DEVICE_ERROR"
        if op.driver is not None and not op.driver.done:
            op.conn.instance.submit(op.driver.abort)

    def on_each(self, operation: str, fn: Callable[..., Any], vobj: VObject | None = None,
                only: Member | None = None) -> dict[str, Any]:
        """Run ``fn(member, conn[, obj])`` on every alive member; returns serial -> result.

        Members that fail are marked down (and need sync); members without the
        object are skipped; the first request error is raised after the others ran.
        """
        self.recovery_tick()
        results: dict[str, Any] = {}
        first_error: BaseException | None = None
        targets = [m for m in self.members if m.alive and (only is None or m is only)]
        if not targets:
            raise GroupDownError(operation, self.label)
        for m in targets:
            try:
                def task(conn: Connection, m: Member = m) -> Any:
                    if vobj is None:
                        return fn(m, conn)
                    return fn(m, conn, self._resolve(m, conn, vobj))

                results[m.serial] = m.run(task, operation=operation)
                with self._lock:
                    m.ops += 1
            except _NotOnMember:
                continue
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)
                    continue
                first_error = first_error or self._request_error(e, operation, m)
        if first_error is not None:
            raise first_error
        if not results and not any(m.alive for m in targets):
            raise GroupDownError(operation, self.label)
        return results

    # ------------------------------------------------------------------
    # virtual objects
    def vobject(self, handle: int, operation: str = "") -> VObject:
        with self._lock:
            v = self._objects.get(int(handle))
        if v is None:
            raise CKRError("CKR_OBJECT_HANDLE_INVALID", operation)
        return v

    def _map(self, m: Member, conn: Connection, vobj: VObject, obj: Any) -> None:
        with self._lock:
            if m.conn is not conn:
                return  # stale connection (an abandoned call): touch nothing
            old = vobj.real.get(m.serial)
            if old is not None:
                self._by_real.pop((m.serial, old[0], old[1]), None)
            vobj.real[m.serial] = (conn.id, obj.handle)
            vobj.absent.pop(m.serial, None)
            self._by_real[(m.serial, conn.id, obj.handle)] = vobj
        conn.remember(obj)

    def _resolve(self, m: Member, conn: Connection, vobj: VObject) -> Any:
        """The python-pkcs11 object behind ``vobj`` on ``m`` (worker thread)."""
        ent = vobj.real.get(m.serial)
        if ent is not None and ent[0] == conn.id:
            obj = conn.objects.get(ent[1])
            if obj is not None:
                return obj
        if vobj.absent.get(m.serial) == conn.id:
            raise _NotOnMember()
        candidates = list(conn.work.get_objects(vobj.ident))
        with self._lock:
            free = [c for c in candidates
                    if self._by_real.get((m.serial, conn.id, c.handle)) in (None, vobj)]
            if not free:
                if m.conn is conn:
                    vobj.absent[m.serial] = conn.id
                raise _NotOnMember()
        self._map(m, conn, vobj, free[0])
        return free[0]

    def _register(self, m: Member, conn: Connection, obj: Any, ident: dict[Any, Any],
                  owner: int | None) -> VObject:
        """The virtual object for a real one: the one already mapped to it, else
        one with the same identity not yet found on this member (so that an
        object copied to a member, e.g. by synchronisation, keeps its handle),
        else a new one."""
        key = replication.ident_key(ident)
        with self._lock:
            existing = self._by_real.get((m.serial, conn.id, obj.handle))
            if existing is not None:
                return existing
            for v in self._by_ident.get(key, ()):
                ent = v.real.get(m.serial)
                if ent is None or ent[0] != conn.id:
                    break
            else:
                v = VObject(handle=next(self._ids), ident=ident, cls=ident.get(Attribute.CLASS),
                            owner=None if ident.get(Attribute.TOKEN) else owner)
                self._objects[v.handle] = v
                self._by_ident.setdefault(key, []).append(v)
        self._map(m, conn, v, obj)
        return v

    def _unindex(self, vobj: VObject) -> None:
        # self._lock held
        key = replication.ident_key(vobj.ident)
        same = self._by_ident.get(key)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(vobj)
            if not same:
                del self._by_ident[key]

    def _forget(self, vobj: VObject) -> None:
        with self._lock:
            self._objects.pop(vobj.handle, None)
            self._unindex(vobj)
            for serial, (cid, h) in vobj.real.items():
                self._by_real.pop((serial, cid, h), None)

    # ------------------------------------------------------------------
    # replication
    def _transfer(self, ident: dict[Any, Any], dst: Member, sources: Sequence[Member],
                  vobj: VObject | None = None, operation: str = "replicate") -> str:
        """Copy the object ``ident`` from one of ``sources`` to ``dst``.

        Returns how it travelled: ``"wrap"`` (under the transport key),
        ``"value"`` (attributes; for a key, its readable value) or ``"escrow"``.
        The rule (docs/engine.md, "Replication policy"): secret and private keys
        travel wrapped; by value or from the escrow only with ReplicateByValue.
        Raises :class:`CKRError` when the object may not or cannot be copied,
        and the member failure when a member fails (it is marked down).
        """
        cls = ident.get(Attribute.CLASS)
        key = replication.ident_key(ident)
        last: BaseException | None = None
        for s in sources:
            how, problem, data = "value", None, None
            if cls in replication.SECRET_CLASSES:
                problem = replication.wrap_problem(s.conn)
                who = s
                if problem is None:
                    problem, who = replication.wrap_problem(dst.conn), dst
                if problem is None:
                    how = "wrap"
                elif not self.settings.replicate_by_value:
                    raise CKRError("CKR_KEY_NOT_WRAPPABLE", operation, dst.serial,
                                   detail=f"secret and private keys travel only wrapped under "
                                          f"the group transport key, and member {who.serial} "
                                          f"cannot: {problem}; {replication.BY_VALUE_HINT}")
                else:
                    template = self._escrow.get(key, dst.serial)
                    if template is not None:
                        how, data = "escrow", {"attrs": template, "wrapped": None}
            if data is None:
                def export(conn: Connection, s: Member = s, how: str = how) -> dict[str, Any]:
                    obj = (self._resolve(s, conn, vobj) if vobj is not None
                           else replication.find_first(conn, ident))
                    if obj is None:
                        raise _NotOnMember()
                    return replication.export(conn, obj, cls, how)

                try:
                    data = s.run(export, operation="C_WrapKey" if how == "wrap"
                                 else "C_GetAttributeValue")
                except _NotOnMember as e:
                    last = e
                    continue
                except Exception as e:
                    if is_member_failure(e):
                        self._mark_failed(s, e)
                        last = e
                        continue
                    name = ckr_name(e)
                    if name == "CKR_ATTRIBUTE_SENSITIVE":
                        raise CKRError("CKR_KEY_NOT_WRAPPABLE", operation, s.serial,
                                       detail="the key is sensitive, so it can travel only "
                                              f"wrapped under the transport key, and {problem}"
                                       ) from None
                    if name in ("CKR_KEY_UNEXTRACTABLE", "CKR_KEY_NOT_WRAPPABLE"):
                        if vobj is not None:
                            vobj.replicable = False
                        raise CKRError(name, operation, s.serial,
                                       detail="the key may not leave its member (not "
                                              "extractable): it cannot be copied") from None
                    raise self._request_error(e, operation, s) from None

            def load(conn: Connection, data: dict[str, Any] = data) -> None:
                obj = replication.import_(conn, data)
                if vobj is not None:
                    self._map(dst, conn, vobj, obj)

            try:
                dst.run(load, operation="C_UnwrapKey" if how == "wrap" else "C_CreateObject")
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(dst, e)
                    raise
                raise self._request_error(e, operation, dst) from None
            finally:
                data = None  # the only reference to values read from a key
            if how == "escrow":
                self._escrow.delivered(key, dst.serial)
            return how
        raise CKRError("CKR_DEVICE_ERROR", operation, dst.serial,
                       detail="no member holding the object is available") from last

    def _replicate(self, vobj: VObject, dst: Member, src: Member | None = None) -> bool:
        """Make ``vobj`` exist on ``dst`` (no-op when it does).  True if copied."""
        try:
            dst.run(lambda conn: self._resolve(dst, conn, vobj), operation="C_FindObjects")
            return False
        except _NotOnMember:
            pass
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(dst, e)
            raise
        sources = [src] if src is not None else [m for m in self.members
                                                 if m.alive and m is not dst
                                                 and m.serial in vobj.real]
        self._transfer(vobj.ident, dst, sources, vobj)
        return True

    def replicate_created(self, vobjs: Sequence[VObject], primary: Member,
                          only: Member | None) -> None:
        """Copy freshly created objects from ``primary`` to every other alive member."""
        if only is not None:
            return
        for m in self.members:
            if m is primary:
                continue
            if not m.alive:
                with self._lock:
                    m.needs_sync = True
                continue
            for v in vobjs:
                try:
                    self._replicate(v, m, primary)
                except Exception as e:
                    with self._lock:
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
        if only is not None:
            return
        for m in self.members:
            if m is primary:
                continue
            if not m.alive:
                with self._lock:
                    m.needs_sync = True
                continue

            def task(conn: Connection, m: Member = m) -> None:
                objs = [self._resolve(m, conn, v) for v in sources]
                made = fn(m, conn, *objs)
                if len(made) != len(vobjs):
                    raise CKRError("CKR_GENERAL_ERROR", "replicate", m.serial)
                for v, o in zip(vobjs, made, strict=True):
                    self._map(m, conn, v, o)

            try:
                m.run(task, operation="replicate")
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)
                    continue
                with self._lock:
                    m.needs_sync = True
                if not isinstance(e, CKRError | pkcs11.PKCS11Error | _NotOnMember):
                    raise

    def create(self, operation: str, fn: Callable[..., list[Any]], vobjs: Sequence[VObject] = (),
               owner: int | None = None, only: Member | None = None,
               replay: bool = False) -> list[VObject]:
        """Create objects on one member with ``fn(member, conn, *objs) -> [pkcs11 objects]``,
        register them, then replicate them to the other members: by running ``fn``
        there too (``replay``, for deterministic calls) or by copying (wrap/value)."""
        def task(m: Member, conn: Connection, *objs: Any) -> tuple[Member, list[VObject]]:
            created = fn(m, conn, *objs)
            return m, [self._register(m, conn, o, _ident_of(o), owner) for o in created]

        primary, out = self.execute(operation, task, vobjs, only)
        if replay:
            self.replicate_replayed(out, primary, fn, vobjs, only)
        else:
            self.replicate_created(out, primary, only)
        return out

    def can_wrap(self, only: Member | None = None) -> bool:
        """True when every alive member can send and receive keys under the transport key."""
        with self._lock:
            conns = [m.conn for m in self.members
                     if m.alive and m.conn is not None and (only is None or m is only)]
        return all(replication.wrap_problem(c) is None for c in conns)

    def generation_mode(self, operation: str, only: Member | None = None) -> str:
        """How a secret or private key generated now reaches every member.

        ``"local"`` (a session pinned to one member, or a one-member group:
        nothing to replicate), ``"wrap"`` (generated once, copied under the
        transport key) or ``"value"`` (generated once in the clear, created on
        every member; only with ReplicateByValue).  Otherwise raises
        ``CKR_KEY_NOT_WRAPPABLE``: a sensitive key that could not be replicated
        would exist on one member only, which an HA group must never pretend
        to be safe.
        """
        if only is not None or len(self.members) == 1:
            return "local"
        with self._lock:
            conns = [(m, m.conn) for m in self.members if m.alive and m.conn is not None]
        for m, conn in conns:
            problem = replication.wrap_problem(conn)
            if problem is None:
                continue
            if self.settings.replicate_by_value:
                return "value"
            raise CKRError("CKR_KEY_NOT_WRAPPABLE", operation, m.serial,
                           detail=f"member {m.serial} cannot receive keys wrapped under the "
                                  f"group transport key: {problem}; the key would exist on "
                                  f"one member only. {replication.BY_VALUE_HINT}")
        return "wrap"

    def create_by_value(self, operation: str, generate: Callable[..., list[dict[Any, Any]]],
                        templates: Sequence[dict[Any, Any]], owner: int | None = None,
                        only: Member | None = None) -> list[VObject]:
        """Generate once, then create the same objects on every member from values.

        Only under ReplicateByValue (see :meth:`generation_mode`):
        ``generate(member, conn)`` makes the key material once on one member as
        non-sensitive session objects, returns their values and destroys them;
        the final (sensitive) objects are then created from ``templates`` +
        values on every alive member.  Members that do not get them (down, or
        refusing) get them later from the escrow.
        """
        values = self.execute(operation, generate, (), only)
        full = [{**t, **v} for t, v in zip(templates, values, strict=True)]
        values.clear()
        vobjs: list[VObject] | None = None
        targets = [m for m in self.members if m.alive and (only is None or m is only)]
        first_error: BaseException | None = None
        holders: set[str] = set()
        try:
            for m in targets:
                def task(conn: Connection, m: Member = m,
                         known: list[VObject] | None = vobjs) -> list[VObject]:
                    objs = [conn.work.create_object(t) for t in full]
                    if known is None:
                        return [self._register(m, conn, o, _ident_of(o), owner) for o in objs]
                    for v, o in zip(known, objs, strict=True):
                        self._map(m, conn, v, o)
                    return known

                try:
                    vobjs = m.run(task, operation=operation)
                    holders.add(m.serial)
                except Exception as e:
                    if is_member_failure(e):
                        self._mark_failed(m, e)
                        continue
                    if vobjs is None:
                        first_error = self._request_error(e, operation, m)
                        break
                    with self._lock:
                        m.needs_sync = True
            if vobjs is None:
                raise first_error or GroupDownError(operation, self.label)
            if only is None:
                missing = {m.serial for m in self.members} - holders
                with self._lock:
                    for m in self.members:
                        if m.serial in missing:
                            m.needs_sync = True
                for v, t in zip(vobjs, full, strict=True):
                    if v.cls in replication.SECRET_CLASSES:
                        self._escrow.put(replication.ident_key(v.ident), t, missing)
            return vobjs
        finally:
            full.clear()

    def destroy(self, vobj: VObject, only: Member | None = None) -> None:
        """Destroy an object on every member (journaled for members that are down)."""
        def task(m: Member, conn: Connection, obj: Any) -> None:
            obj.destroy()
            conn.objects.pop(obj.handle, None)

        self.on_each("C_DestroyObject", task, vobj, only)
        if only is None:
            with self._lock:
                for m in self.members:
                    if not m.alive:
                        m.journal.append(("destroy", dict(vobj.ident), None))
                        m.needs_sync = True
        self._escrow.drop(replication.ident_key(vobj.ident))
        self._forget(vobj)

    def _set_on(self, m: Member, conn: Connection, vobj: VObject, attrs: dict[Any, Any]) -> None:
        obj = self._resolve(m, conn, vobj)
        for k, v in attrs.items():
            obj[k] = v

    def set_attributes(self, vobj: VObject, attrs: dict[Any, Any],
                       only: Member | None = None) -> None:
        """Set attributes on every member (journaled for members that are down)."""
        def task(m: Member, conn: Connection, obj: Any) -> None:
            for k, v in attrs.items():
                obj[k] = v

        self.on_each("C_SetAttributeValue", task, vobj, only)
        with self._lock:
            if any(k in attrs and k in vobj.ident for k in (Attribute.LABEL, Attribute.ID)):
                self._unindex(vobj)
                for k in (Attribute.LABEL, Attribute.ID):
                    if k in attrs and k in vobj.ident:
                        vobj.ident[k] = attrs[k]
                self._by_ident.setdefault(replication.ident_key(vobj.ident), []).append(vobj)
            if only is None:
                for m in self.members:
                    if not m.alive:
                        m.journal.append(("set", vobj.handle, dict(attrs)))
                        m.needs_sync = True

    # ------------------------------------------------------------------
    # login
    @property
    def logged_in(self) -> bool:
        return self._pin is not None

    def login(self, pin: str) -> None:
        """Log in to every alive member with the same PIN (kept only to re-login
        recovered members; never shown).

        Then the members are compared (inventory, ``needs_sync``) and, when the
        group's HASynchronize flag is set, synchronised; neither can fail the
        login.
        """
        self.recovery_tick()
        self._login(pin)
        self._after_login()

    def _login(self, pin: str) -> None:
        if self._pin is not None:
            raise CKRError("CKR_USER_ALREADY_LOGGED_IN", "C_Login")
        done: list[Member] = []

        def task(conn: Connection) -> None:
            if conn.login is None:
                conn.login = conn.token.open(rw=True, user_pin=pin, attribute_mapper=MAPPER)

        for m in [m for m in self.members if m.alive]:
            try:
                m.run(task, operation="C_Login")
                done.append(m)
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)
                    continue
                for d in done:
                    self._logout_member(d)
                raise self._request_error(e, "C_Login", m) from e
        if not done:
            raise GroupDownError("C_Login", self.label)
        self._pin = _Secret(pin)

    def _logout_member(self, m: Member) -> None:
        def task(conn: Connection) -> None:
            if conn.login is not None:
                s, conn.login = conn.login, None
                s.close()

        try:
            m.run(task, operation="C_Logout")
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(m, e)

    def logout(self) -> None:
        """Log out of every member and forget the PIN."""
        self.recovery_tick()
        if self._pin is None:
            raise CKRError("CKR_USER_NOT_LOGGED_IN", "C_Logout")
        self._pin = None
        for m in self.members:
            if m.alive:
                self._logout_member(m)

    # ------------------------------------------------------------------
    # sessions
    def open_session(self, rw: bool = True, member: str | None = None) -> Any:
        """Open a virtual session (``member``: pin it to one member, no failover)."""
        from hacli.engine.session import VirtualSession

        self.recovery_tick()
        only = self._member(member) if member is not None else None
        if only is None and not any(m.alive for m in self.members):
            raise GroupDownError("C_OpenSession", self.label)
        vs = VirtualSession(self, next(self._ids), rw=rw, only=only)
        with self._lock:
            self._sessions[vs.handle] = vs
        return vs

    def _session_closed(self, vs: Any) -> None:
        with self._lock:
            self._sessions.pop(vs.handle, None)
            owned = [v for v in self._objects.values() if v.owner == vs.handle]
        for v in owned:
            try:
                self.destroy(v)
            except Exception:
                self._forget(v)

    def sessions(self) -> list[Any]:
        with self._lock:
            return list(self._sessions.values())

    # ------------------------------------------------------------------
    # status and info
    def status(self, probe: bool = True) -> GroupStatus:
        """HA status (no PIN needed).  Probes alive members (C_GetTokenInfo).

        The first report after a member failed shows ``CKR_DEVICE_ERROR`` for
        it, later ones ``CKR_TOKEN_NOT_PRESENT`` until it is back.
        """
        self.recovery_tick()
        if probe:
            threads = [threading.Thread(target=self._probe, args=(m,), daemon=True)
                       for m in self.members if m.alive]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
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
        try:
            m.run(lambda conn: conn.token.slot.get_token(), operation="C_GetTokenInfo")
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(m, e)

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


def random_id() -> bytes:
    """A CKA_ID for objects created without one, so replicas can be matched."""
    return os.urandom(16)


__all__ = ["DEFAULT_KEY_CAPABILITIES", "WRAP_MECHANISM", "HAGroup", "KeyType", "VObject",
           "random_id"]
