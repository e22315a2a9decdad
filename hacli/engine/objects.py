"""Virtual object handles: one integer handle per object, one real handle per member.

An application sees only the virtual handle; :class:`ObjectRegistry` maps it to
the python-pkcs11 object on each member, finds the replica on a member it has
not seen there yet (by identity: class, key type, id, label, token flag), and
forgets mappings that belong to a replaced connection.  Real handles and
sessions come and go behind the virtual handle (failover, recovery).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pkcs11 import Attribute

from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.engine.member import Connection, Member
from hacli.engine.replication import ident_key


class NotOnMember(Exception):
    """The object does not exist on this member (try another one)."""


#: Seconds a member found without an object is not asked for it again (on the
#: same connection); after that one more search decides.  Tokens change under
#: the group: another application or process adds the object, or a member's
#: search came back empty for a moment (a chaos run under load met a member
#: that was left out of a key's calls for good this way, so every failover of
#: that key then had nowhere to go).
ABSENT_RECHECK = 5.0


@dataclass(eq=False)
class VObject:
    """A virtual object: one identity, one real handle per member."""

    handle: int
    ident: dict[Any, Any]
    cls: Any
    owner: int | None = None  # virtual session owning a session object
    real: dict[str, tuple[int, int]] = field(default_factory=dict)  # serial -> (conn id, handle)
    #: serial -> (conn id, time.monotonic()) of the search that found the
    #: object absent from that member's connection
    absent: dict[str, tuple[int, float]] = field(default_factory=dict)
    replicable: bool = True

    def absent_from(self, serial: str, conn_id: int) -> bool:
        """True when the object is known to be absent from that connection,
        until the memo is :data:`ABSENT_RECHECK` s old (then the member is
        searched again)."""
        memo = self.absent.get(serial)
        return (memo is not None and memo[0] == conn_id
                and time.monotonic() - memo[1] < ABSENT_RECHECK)

    @property
    def is_token_object(self) -> bool:
        return bool(self.ident.get(Attribute.TOKEN, False))


class ObjectRegistry:
    """The virtual objects of one group.

    ``lock`` is the group's lock, not one of its own: mapping a real object
    checks that the member's connection is still the one the object came from,
    and that check must be atomic with the member state the group guards.
    ``ids`` is the engine-wide handle counter (sessions and objects share it).
    """

    def __init__(self, lock: threading.RLock, ids: itertools.count[int]):
        self._lock = lock
        self._ids = ids
        self._objects: dict[int, VObject] = {}
        self._by_real: dict[tuple[str, int, int], VObject] = {}
        self._by_ident: dict[Any, list[VObject]] = {}

    def __repr__(self) -> str:
        return f"<ObjectRegistry {len(self._objects)} objects>"

    def get(self, handle: int, operation: str = "") -> VObject:
        """The object with this virtual handle (``CKR_OBJECT_HANDLE_INVALID`` if none)."""
        with self._lock:
            v = self._objects.get(int(handle))
        if v is None:
            raise CKRError(CKR.OBJECT_HANDLE_INVALID, operation)
        return v

    def find(self, handle: int) -> VObject | None:
        with self._lock:
            return self._objects.get(handle)

    def owned_by(self, session: int) -> list[VObject]:
        """The session objects a virtual session created."""
        with self._lock:
            return [v for v in self._objects.values() if v.owner == session]

    def replicable_session_objects(self) -> list[VObject]:
        with self._lock:
            return [v for v in self._objects.values() if not v.is_token_object and v.replicable]

    def present_on(self, serial: str) -> None:
        """Objects were copied to member ``serial``: look for them there again."""
        with self._lock:
            for v in self._objects.values():
                v.absent.pop(serial, None)

    def map(self, m: Member, conn: Connection, vobj: VObject, obj: Any) -> None:
        """Record that ``obj`` (on ``m`` through ``conn``) is ``vobj``'s replica."""
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

    def resolve(self, m: Member, conn: Connection, vobj: VObject) -> Any:
        """The python-pkcs11 object behind ``vobj`` on ``m``, bound to the
        calling lane's work session (inside a call into ``m``).

        Raises :class:`NotOnMember` when ``m`` has no free object of that
        identity (remembered per connection, so it is not searched again).
        """
        ent = vobj.real.get(m.serial)
        if ent is not None and ent[0] == conn.id:
            obj = conn.objects.get(ent[1])
            if obj is not None:
                return obj
        if vobj.absent_from(m.serial, conn.id):
            raise NotOnMember()
        candidates = list(conn.work.get_objects(vobj.ident))
        if ent is not None and ent[0] == conn.id:
            # mapped on this connection, first use on this lane (another work
            # session): the same handle, bound to this lane's session
            candidates.sort(key=lambda c: c.handle != ent[1])
        with self._lock:
            free = [c for c in candidates
                    if self._by_real.get((m.serial, conn.id, c.handle)) in (None, vobj)]
            if not free:
                if m.conn is conn:
                    vobj.absent[m.serial] = (conn.id, time.monotonic())
                raise NotOnMember()
        self.map(m, conn, vobj, free[0])
        return free[0]

    def register(self, m: Member, conn: Connection, obj: Any, ident: dict[Any, Any],
                 owner: int | None) -> VObject:
        """The virtual object for a real one: the one already mapped to it, else
        one with the same identity not yet found on this member (so that an
        object copied to a member, e.g. by synchronisation, keeps its handle),
        else a new one."""
        key = ident_key(ident)
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
        self.map(m, conn, v, obj)
        return v

    def relabel(self, vobj: VObject, attrs: dict[Any, Any]) -> None:
        """Attributes were set: keep the identity (label, id) the object is found by."""
        with self._lock:
            if any(k in attrs and k in vobj.ident for k in (Attribute.LABEL, Attribute.ID)):
                self._unindex(vobj)
                for k in (Attribute.LABEL, Attribute.ID):
                    if k in attrs and k in vobj.ident:
                        vobj.ident[k] = attrs[k]
                self._by_ident.setdefault(ident_key(vobj.ident), []).append(vobj)

    def forget(self, vobj: VObject) -> None:
        with self._lock:
            self._objects.pop(vobj.handle, None)
            self._unindex(vobj)
            for serial, (cid, h) in vobj.real.items():
                self._by_real.pop((serial, cid, h), None)

    def _unindex(self, vobj: VObject) -> None:
        # self._lock held
        key = ident_key(vobj.ident)
        same = self._by_ident.get(key)
        if same is not None:
            with contextlib.suppress(ValueError):
                same.remove(vobj)
            if not same:
                del self._by_ident[key]


__all__ = ["ABSENT_RECHECK", "NotOnMember", "ObjectRegistry", "VObject"]
