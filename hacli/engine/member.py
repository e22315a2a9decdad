"""Members: one real PKCS#11 token each, reached through a module instance.

A :class:`Member` holds the engine-side state of one token (alive/down, counters,
needs-sync) and, while alive, a :class:`Connection`: the python-pkcs11 token and
sessions of one module generation.  A connection is touched only inside calls
into its module instance (``Member.run``); where the module takes several calls
at once, each runs on its own *lane* of the connection (its own work session
and python-pkcs11 objects), so no lock guards a lane; a call that was
abandoned after a timeout can only ever touch its own, by then discarded,
connection.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from pkcs11 import Attribute, ObjectClass
from pkcs11.attributes import AttributeMapper

from hacli.conf.model_types import MemberLocation
from hacli.engine.exceptions import ModuleUnavailable
from hacli.engine.module import ModuleInstance, lane_index, lane_local
from hacli.engine.stats import MemberStats

if TYPE_CHECKING:
    from hacli.engine.p11types import P11Session

T = TypeVar("T")

#: Label and CKA_ID of the group transport key (see docs/engine.md).
TRANSPORT_LABEL = "hacli-transport"
TRANSPORT_ID = b"hacli-transport"


class MemberState(enum.Enum):
    """A member's place in its state machine (changed only by
    :class:`hacli.engine.members.MemberSet`)."""

    #: In service.
    ALIVE = "alive"
    #: Marked down: out of balancing, waiting for the recovery policy.
    DOWN = "down"
    #: A recovery attempt is connecting it; it serves nothing yet.
    RECOVERING = "recovering"
    #: Back in service after a recovery, being caught up in the background;
    #: it serves the objects it holds (the balancer routes the others away).
    SYNCHRONISING = "synchronising"


#: The states in which a member serves calls.
SERVING_STATES = frozenset({MemberState.ALIVE, MemberState.SYNCHRONISING})


class HAMapper(AttributeMapper):
    """An AttributeMapper whose default templates set only what applies.

    python-pkcs11's defaults put every capability attribute on every key;
    SoftHSM2 then refuses e.g. ``CKA_ENCRYPT`` on an unwrapped private key.
    The engine always passes complete templates itself.
    """

    @staticmethod
    def _common(t: dict[Any, Any], id_: bytes | None, label: str | None,
                store: bool) -> dict[Any, Any]:
        if id_:
            t[Attribute.ID] = id_
        if label:
            t[Attribute.LABEL] = label
        t[Attribute.TOKEN] = bool(store)
        return t

    def public_key_template(self, *, capabilities: Any, id_: Any, label: Any,
                         store: Any) -> dict[Any, Any]:
        return self._common({Attribute.CLASS: ObjectClass.PUBLIC_KEY}, id_, label, store)

    def private_key_template(self, *, capabilities: Any, id_: Any, label: Any,
                         store: Any) -> dict[Any, Any]:
        return self._common({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.PRIVATE: True,
                             Attribute.SENSITIVE: True}, id_, label, store)

    def secret_key_template(self, *, capabilities: Any, id_: Any, label: Any,
                         store: Any) -> dict[Any, Any]:
        return self._common({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.PRIVATE: True,
                             Attribute.SENSITIVE: True}, id_, label, store)

    def generic_key_template(self, base_template: dict[Any, Any], *, capabilities: Any, id_: Any,
                             label: Any, store: Any) -> dict[Any, Any]:
        return self._common(dict(base_template), id_, label, store)


MAPPER = HAMapper()

_conn_ids = itertools.count(1)


class Lane:
    """What one call at a time uses of a connection: a R/W work session, the
    python-pkcs11 objects bound to it, and the transport key found in it.

    python-pkcs11 binds an object to the session it was found or created in,
    and PKCS#11 allows one active operation per session: calls running at once
    on one connection each need a lane.  Object handles and session objects
    are the application's, shared by all its sessions, so a handle mapped on
    one lane is valid on every lane of the connection.
    """

    __slots__ = ("objects", "transport", "work")

    def __init__(self, work: P11Session):
        self.work = work
        #: real handle -> python-pkcs11 Object bound to ``work``
        self.objects: dict[int, Any] = {}
        #: the group transport key, bound to ``work`` (None: the member has none)
        self.transport: Any = None

    def find_transport(self) -> Any:
        """Look for the group transport key in this lane's session (inside a call)."""
        found = list(self.work.get_objects({Attribute.LABEL: TRANSPORT_LABEL,
                                            Attribute.CLASS: ObjectClass.SECRET_KEY}))
        self.transport = found[0] if found else None
        return self.transport


class Connection:
    """A member's live python-pkcs11 state on one module generation.

    ``work`` is a R/W session (no PIN of its own) that every single-part
    operation, object management call and search uses; ``objects`` and
    ``transport`` are bound to it.  The three belong to the calling thread's
    *lane* (:func:`~hacli.engine.module.lane_index`): one per call the module
    instance runs at once (``instance.concurrency``, one where calls are
    serialised), opened on a lane's first use.  ``login`` is the session
    opened with the user PIN; closing it logs the token out.
    """

    def __init__(self, instance: ModuleInstance, token: Any, work: P11Session):
        self.id = next(_conn_ids)
        self.instance = instance
        self.generation = instance.generation
        self.token = token
        #: lane index -> lane, None until a call first uses it
        self.lanes: list[Lane | None] = [None] * instance.concurrency
        self.lanes[0] = Lane(work)
        self.login: Any = None
        self.retired: list[Any] = []
        #: idle sessions for multi-part operations (see hacli.engine.multipart)
        self.op_sessions: list[Any] = []
        #: False when the module cannot carry CKM_AES_KEY_WRAP_PAD (p11-kit's RPC
        #: without hacli's patch filters it out): secret and private keys then
        #: cannot be replicated to or from this member.
        self.can_wrap = True

    @property
    def lane(self) -> Lane:
        """The calling thread's lane of this connection (opened on first use).

        Outside a call into the instance (index 0) this is lane 0, opened with
        the connection: reading its ``transport`` there costs no module call.
        """
        try:  # (read on every call: the thread-local, not lane_index())
            lane = self.lanes[lane_local.lane]
        except IndexError:  # a thread in a call into another instance: only
            lane = self.lanes[0]  # lane 0 is sure to exist (and is open)
        return lane if lane is not None else self._open_lane()

    @property
    def work(self) -> P11Session:
        """The calling thread's work session."""
        return self.lane.work

    @property
    def objects(self) -> dict[int, Any]:
        """real handle -> python-pkcs11 Object bound to :attr:`work`."""
        return self.lane.objects

    @property
    def transport(self) -> Any:
        """The group transport key bound to :attr:`work`, or None."""
        return self.lane.transport

    def _open_lane(self) -> Lane:
        """Open the calling thread's lane: a work session of its own (inside a
        call holding that lane of the instance, so no other thread opens it)."""
        lane = Lane(self.token.open(rw=True, attribute_mapper=MAPPER))
        self.lanes[lane_index()] = lane
        lane.find_transport()
        return lane

    def destroy(self, obj: Any) -> None:
        """``C_DestroyObject`` on ``obj`` and forget its handle on every lane."""
        obj.destroy()
        for lane in self.lanes:
            if lane is not None:
                lane.objects.pop(obj.handle, None)

    def remember(self, obj: Any) -> Any:
        """Cache ``obj`` (bound to this thread's work session) by its handle."""
        self.lane.objects[obj.handle] = obj
        return obj

    def rotate_work_session(self) -> None:
        """Replace this lane's ``work`` after an error that can leave an
        operation active (``CKR_BUFFER_TOO_SMALL``): the old session stays open,
        so session objects it created live on; objects are looked up again by
        identity."""
        lane = self.lane
        self.retired.append(lane.work)
        lane.work = self.token.open(rw=True, attribute_mapper=MAPPER)
        lane.objects.clear()
        lane.find_transport()

    def close_sessions(self) -> None:
        """Close every session of this connection: the login session
        (logging the token out), every lane's work, retired and idle operation sessions.

        For a connection whose token changed under it (``C_InitToken`` by
        another application): a module instance shared with other members is
        not re-initialised by a recovery, and the token would stay logged in
        there.  Errors are ignored: the token may refuse a session it forgot.
        """
        works = [lane.work for lane in self.lanes if lane is not None]
        for session in [self.login, *works, *self.retired, *self.op_sessions]:
            if session is not None:
                with contextlib.suppress(Exception):
                    session.close()
        self.login = None
        self.retired.clear()
        self.op_sessions.clear()
        for lane in self.lanes:
            if lane is not None:
                lane.objects.clear()



def open_connection(instance: ModuleInstance, serial: str, pin: str | None) -> Connection:
    """Find the token ``serial`` on ``instance`` and open its sessions (worker only)."""
    lib = instance.lib
    if lib is None:
        raise ModuleUnavailable(serial, "module not loaded")
    for slot in lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except (pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised):
            continue
        if token.serial.decode("ascii", "replace").strip() == serial:
            break
    else:
        raise pkcs11.TokenNotPresent()
    work = token.open(rw=True, attribute_mapper=MAPPER)
    conn = Connection(instance, token, work)
    if pin is not None:
        conn.login = token.open(rw=True, user_pin=pin, attribute_mapper=MAPPER)
    # lane 0, whatever lane this call holds: nobody else has the connection yet
    lane0 = conn.lanes[0]
    assert lane0 is not None
    lane0.find_transport()
    try:
        conn.can_wrap = pkcs11.Mechanism.AES_KEY_WRAP_PAD in token.slot.get_mechanisms()
    except pkcs11.FunctionNotSupported:
        conn.can_wrap = True
    return conn


class Member:
    """One member token of an HA group.

    State fields (``state``, ``conn``, counters) are guarded by the owning
    group's lock; the connection's contents only by the worker thread.
    """

    def __init__(self, serial: str, location: MemberLocation | None, timeout: float):
        self.serial = serial
        self.location = location
        self.timeout = timeout
        #: True while the member serves calls (in service or synchronising): a
        #: plain attribute, kept by the ``state`` setter, read on every call
        self.alive = False
        self.state = MemberState.DOWN
        self.instance: ModuleInstance | None = None
        self.conn: Connection | None = None
        self.down_since: float | None = time.monotonic()
        #: When it was last connected (the group's clock); None while down.
        self.up_since: float | None = None
        #: True once a status report has shown CKR_DEVICE_ERROR for this failure.
        self.failure_reported = False
        self.last_error: str | None = None
        self.needs_sync = False
        #: A call creating objects on this member was cut by its failure: it
        #: may hold a half-made object (SoftHSM2 writes a new object before its
        #: label and ID); the next synchronisation looks for one.
        self.creation_cut = False
        #: one entry per call picked on this member and not yet done: a
        #: deque's append and pop are atomic, so the balancer counts a call in
        #: and out without a lock (:attr:`in_flight` is its length)
        self.flight: collections.deque[None] = collections.deque()
        self.ops = 0
        self.failures = 0
        self.recoveries = 0
        #: calls, errors, latency, failovers (hacli.engine.stats)
        self.stats = MemberStats()

    @property
    def in_flight(self) -> int:
        """Calls picked on this member and not yet done."""
        return len(self.flight)

    def __repr__(self) -> str:
        return f"<Member {self.serial} {self.state.value}>"

    @property
    def state(self) -> MemberState:
        """Where the member is in its state machine (see MemberSet)."""
        return self._state

    @state.setter
    def state(self, state: MemberState) -> None:
        self._state = state
        self.alive = state in SERVING_STATES

    def run(self, fn: Callable[..., T], *args: Any, operation: str = "",
            timeout: float | None = None, wait_behind: bool = True) -> T:
        """Run ``fn(conn, *args)`` in this member's module, bounded by the command
        timeout (``timeout``: a shorter budget, see :meth:`ModuleInstance.call`)."""
        conn = self.conn
        if conn is None or not conn.instance.usable:
            raise ModuleUnavailable(self.serial)
        return conn.instance.call(fn, conn, *args, timeout=timeout or self.timeout,
                                  operation=operation, wait_behind=wait_behind,
                                  full_timeout=self.timeout)


__all__ = ["MAPPER", "SERVING_STATES", "TRANSPORT_ID", "TRANSPORT_LABEL", "Connection",
           "HAMapper", "Lane", "Member", "MemberState", "open_connection"]
