"""The PKCS#11 calls a p11-kit client sends, served over the HA engine.

One :class:`Service` per server (the engine, the slots it exposes, the logins
shared by every connection); one :class:`ClientState` per connection (its
sessions, its operations, whether it is logged in).  :data:`HANDLERS` is the
dispatch table: call name -> method of :class:`ClientState`; a call that is
not in it answers ``CKR_FUNCTION_NOT_SUPPORTED`` (docs/serve.md lists them).

PKCS#11 2.40 semantics the engine's one-call API does not have are kept here:
a length query (NULL output buffer) runs the operation once and keeps its
answer for the call that follows with a buffer, which ends the operation;
``CKR_BUFFER_TOO_SMALL`` keeps it too.  Logins are the application's: a
connection is logged in or not, the group stays logged in while any
connection is, and a PIN is checked against the group's kept one without
asking a token again (a wrong PIN is never retried on a token).
"""

from __future__ import annotations

import hmac
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11 import Attribute, KeyType

from hacli import __version__
from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.member import MAPPER
from hacli.serve.codec import (
    Attr,
    AttrRequest,
    AttrValue,
    Mechanism,
    Reader,
    Writer,
    native_length,
)
from hacli.serve.wire import MAX_FRAME, ProtocolError

if TYPE_CHECKING:
    from hacli.engine.engine import Engine
    from hacli.engine.session import VirtualSession
    from hacli.engine.types import SlotInfo

LOG = logging.getLogger("hacli.serve")

# PKCS#11 constants the wire needs (flags and states; the CKR codes are hacli.engine.ckr's)
CKF_TOKEN_PRESENT = 0x1
CKF_HW_SLOT = 0x4
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_SO, CKU_USER = 0, 1
CKS_RO_PUBLIC, CKS_RO_USER, CKS_RW_PUBLIC, CKS_RW_USER = 0, 1, 2, 3
UNAVAILABLE = 0xFFFFFFFFFFFFFFFF  # CK_UNAVAILABLE_INFORMATION as a CK_ULONG
CRYPTOKI_VERSION = (2, 40)

#: key pair generation mechanism -> key type (what the engine's generate_keypair takes)
KEYPAIR_TYPES = {pkcs11.Mechanism.RSA_PKCS_KEY_PAIR_GEN: KeyType.RSA,
                 pkcs11.Mechanism.EC_KEY_PAIR_GEN: KeyType.EC}
#: mechanisms whose parameter is CK_ECDH1_DERIVE_PARAMS
ECDH_MECHANISMS = (int(pkcs11.Mechanism.ECDH1_DERIVE), int(pkcs11.Mechanism.ECDH1_COFACTOR_DERIVE))
#: secret key generation mechanism -> key type
KEYGEN_TYPES = {pkcs11.Mechanism.AES_KEY_GEN: KeyType.AES,
                pkcs11.Mechanism.GENERIC_SECRET_KEY_GEN: KeyType.GENERIC_SECRET}


#: what an unavailable attribute answers (C_GetAttributeValue goes on with the others)
UNAVAILABLE_CODES = (CKR.ATTRIBUTE_SENSITIVE, CKR.ATTRIBUTE_TYPE_INVALID)


def rv_of(error: BaseException) -> int:
    """The CK_RV an exception from the engine or python-pkcs11 stands for."""
    code = CKR.get(ckr_name(error))
    return code.rv if code is not None else CKR.GENERAL_ERROR.rv


def fail(ckr: CKR, operation: str) -> CKRError:
    return CKRError(ckr, operation)


# -- attribute values between the wire (native bytes) and python-pkcs11 -------
def to_python(attrs: list[Attr], operation: str) -> dict[Any, Any]:
    """A template from the wire as python-pkcs11 values (unknown types: TYPE_INVALID)."""
    out: dict[Any, Any] = {}
    for a in attrs:
        if not isinstance(a.value, bytes):
            raise fail(CKR.ATTRIBUTE_VALUE_INVALID, operation)
        try:
            key = Attribute(a.type)
            out[key] = MAPPER.unpack_attributes(key, a.value)
        except (ValueError, NotImplementedError) as e:
            raise fail(CKR.ATTRIBUTE_TYPE_INVALID, operation) from e
        except Exception as e:  # a value the attribute's type cannot hold (struct, utf-8)
            raise fail(CKR.ATTRIBUTE_VALUE_INVALID, operation) from e
    return out


def to_native(key: int, value: Any) -> bytes:
    """A python-pkcs11 value as the bytes a C caller gets."""
    if isinstance(value, bytes):
        return value
    return MAPPER.pack_attribute(Attribute(key), value)


def to_mechanism(mech: Mechanism, operation: str) -> tuple[Any, Any]:
    """(python-pkcs11 mechanism, mechanism_param) for the engine."""
    try:
        m = pkcs11.Mechanism(mech.type)
    except ValueError as e:
        raise fail(CKR.MECHANISM_INVALID, operation) from e
    p = mech.param
    if p is None or isinstance(p, bytes):
        return m, p or None
    try:
        if mech.type in ECDH_MECHANISMS and isinstance(p[0], int):  # kdf, shared, public
            return m, (pkcs11.KDF(p[0]), p[1], p[2])
        if len(p) == 3 and isinstance(p[0], int) and isinstance(p[1], int):  # PSS
            return m, (pkcs11.Mechanism(p[0]), pkcs11.MGF(p[1]), p[2])
        hash_, mgf = p[0], p[1]
        if len(p) == 4 and isinstance(hash_, int) and isinstance(mgf, int):  # OAEP
            return m, (pkcs11.Mechanism(hash_), pkcs11.MGF(mgf), p[3])
    except ValueError as e:
        raise fail(CKR.MECHANISM_PARAM_INVALID, operation) from e
    raise fail(CKR.MECHANISM_PARAM_INVALID, operation)


def required_mechanism(mech: Mechanism | None, operation: str) -> tuple[Any, Any]:
    """:func:`to_mechanism` where a NULL mechanism is no answer (not an init that cancels)."""
    if mech is None:
        raise fail(CKR.MECHANISM_INVALID, operation)
    return to_mechanism(mech, operation)


def generation(mech: Mechanism | None, table: dict[Any, KeyType],
               operation: str) -> tuple[Any, KeyType]:
    """(mechanism, key type) of a key generation mechanism hacli can replicate."""
    m, _param = required_mechanism(mech, operation)
    key_type = table.get(m)
    if key_type is None:
        raise fail(CKR.MECHANISM_INVALID, operation)
    return m, key_type


def library_version() -> tuple[int, int]:
    """hacli's version as a CK_VERSION (major, minor)."""
    parts = [int(x) if x.isdigit() else 0 for x in __version__.split(".")[:2]]
    major, minor = [*parts, 0, 0][:2]
    return major, minor


# -- operations ------------------------------------------------------------------
@dataclass
class Operation:
    """One active crypto operation of a session (sign, verify, encrypt, decrypt, digest)."""

    kind: str
    key: int | None
    mechanism: Any
    param: Any
    started: bool = False  #: multi-part begun in the engine
    answer: bytes | None = None  #: kept after a length query or BUFFER_TOO_SMALL


@dataclass
class SessionState:
    """A client's session: the engine's virtual session and what PKCS#11 keeps per session."""

    vs: VirtualSession
    slot_id: int
    rw: bool
    ops: dict[str, Operation] = field(default_factory=dict)
    found: list[int] | None = None
    #: a wrapped key kept after a length query: ((mechanism, wrapping key, key), blob)
    wrapped: tuple[tuple[int, int, int], bytes] | None = None


class Service:
    """What every connection shares: the engine, the exposed slots, the group logins."""

    def __init__(self, engine: Engine, members: bool = False) -> None:
        self.engine = engine
        self.members = members
        self._lock = threading.Lock()
        #: group label -> the connections logged in to it
        self._logins: dict[str, set[int]] = {}
        self._mechanisms: dict[int, set[int]] = {}

    def slots(self) -> list[SlotInfo]:
        """The slots a client sees: the HA virtual slots, with --members the member slots too
        (``HAOnly`` hides those in the engine already)."""
        return [s for s in self.engine.slots() if self.members or s.kind == "ha"]

    def slot(self, slot_id: int, operation: str) -> SlotInfo:
        for s in self.slots():
            if s.slot_id == slot_id:
                return s
        raise fail(CKR.SLOT_ID_INVALID, operation)

    def mechanisms(self, slot_id: int) -> set[int]:
        """The mechanisms of a slot (asked once: a group's members do not change them)."""
        with self._lock:
            known = self._mechanisms.get(slot_id)
        if known is None:
            with self.engine.open_session(slot_id, rw=False) as vs:
                known = {int(m) for m in vs.mechanisms()}
            with self._lock:
                self._mechanisms[slot_id] = known
        return known

    def login(self, client: int, group: str, pin: str) -> None:
        """Log ``client`` in: the first login goes to the tokens, later ones are
        compared with the PIN the group holds (no token is asked again)."""
        with self._lock:
            holders = self._logins.setdefault(group, set())
            if client in holders:
                raise fail(CKR.USER_ALREADY_LOGGED_IN, "C_Login")
            g = self.engine.group(group)
            kept = g.login_state.pin()
            if kept is None:
                g.login(pin)  # once: a wrong PIN counts once on each token, never retried
            elif not hmac.compare_digest(kept.encode(), pin.encode()):
                raise fail(CKR.PIN_INCORRECT, "C_Login")
            holders.add(client)

    def logout(self, client: int, group: str) -> None:
        """Log ``client`` out; the group logs out of its tokens with its last client."""
        with self._lock:
            holders = self._logins.get(group, set())
            if client not in holders:
                raise fail(CKR.USER_NOT_LOGGED_IN, "C_Logout")
            holders.discard(client)
            g = self.engine.group(group)
            if not holders and g.logged_in:
                g.logout()

    def logged_in(self, client: int, group: str) -> bool:
        with self._lock:
            return client in self._logins.get(group, set())


class ClientState:
    """One connection's PKCS#11 state and its call handlers."""

    _ids = itertools.count(1)

    def __init__(self, service: Service) -> None:
        self.service = service
        self.id = next(self._ids)
        self.initialized = False
        self.sessions: dict[int, SessionState] = {}
        self._handles = itertools.count(1)

    # -- entry ---------------------------------------------------------------
    def handle(self, reader: Reader) -> bytes:
        """Run one parsed request; the response body (a result or the ERROR response)."""
        handler = HANDLERS.get(reader.name)
        try:
            if handler is None:
                raise fail(CKR.FUNCTION_NOT_SUPPORTED, reader.name)
            if not self.initialized and reader.name != "C_Initialize":
                raise fail(CKR.CRYPTOKI_NOT_INITIALIZED, reader.name)
            return handler(self, reader).finish()
        except ProtocolError:
            raise  # garbage in the arguments: the server drops the connection
        except Exception as e:  # every failure is a CK_RV for the client, never a crash
            if not isinstance(e, CKRError | pkcs11.PKCS11Error):
                LOG.debug("%s failed", reader.name, exc_info=True)
            return Writer.error(rv_of(e))

    def close(self) -> None:
        """The connection ended: close its sessions, drop its logins."""
        for h in list(self.sessions):
            self._close_session(h)
        for g in self.service.engine.groups:
            if self.service.logged_in(self.id, g.label):
                self.service.logout(self.id, g.label)

    def _session(self, handle: int, operation: str) -> SessionState:
        s = self.sessions.get(handle)
        if s is None:
            raise fail(CKR.SESSION_HANDLE_INVALID, operation)
        return s

    def _close_session(self, handle: int) -> None:
        s = self.sessions.pop(handle)
        s.vs.close()

    def _group_of(self, slot_id: int, operation: str) -> str:
        group = self.service.slot(slot_id, operation).group
        assert group is not None
        return group

    # -- general -----------------------------------------------------------------
    def c_initialize(self, r: Reader) -> Writer:
        handshake = r.byte_array()
        r.byte()
        r.byte_array()
        r.done()
        if handshake != b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1":
            raise fail(CKR.ARGUMENTS_BAD, "C_Initialize")
        if self.initialized:
            raise fail(CKR.CRYPTOKI_ALREADY_INITIALIZED, "C_Initialize")
        self.initialized = True
        return Writer(r.call_id)

    def c_finalize(self, r: Reader) -> Writer:
        r.done()
        self.close()
        self.initialized = False
        return Writer(r.call_id)

    def c_get_info(self, r: Reader) -> Writer:
        r.done()
        w = Writer(r.call_id)
        w.version(CRYPTOKI_VERSION)
        w.space_string("hacli", 32)
        w.ulong(0)
        w.space_string("hacli serve: PKCS#11 HA slots", 32)
        w.version(library_version())
        return w

    def c_get_slot_list(self, r: Reader) -> Writer:
        r.byte()  # token present: every slot listed has one while a member serves
        room = r.ulong_buffer()
        r.done()
        ids = [s.slot_id for s in self.service.slots()]
        w = Writer(r.call_id)
        if room is None or room < len(ids):
            w.ulong_array(None, len(ids))  # a length answer, or BUFFER_TOO_SMALL for the client
        else:
            w.ulong_array(ids)
        return w

    def c_get_slot_info(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        r.done()
        s = self.service.slot(slot_id, "C_GetSlotInfo")
        w = Writer(r.call_id)
        w.space_string(s.description, 64)
        w.space_string("hacli", 32)
        w.ulong((CKF_TOKEN_PRESENT if s.present else 0) | CKF_HW_SLOT)
        w.version((0, 0))
        w.version((0, 0))
        return w

    def c_get_token_info(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        r.done()
        self.service.slot(slot_id, "C_GetTokenInfo")
        t = self.service.engine.token_info(slot_id)
        w = Writer(r.call_id)
        w.space_string(t.label, 32)
        w.space_string(t.manufacturer_id, 32)
        w.space_string(t.model, 16)
        w.space_string(t.serial, 16)
        w.ulong(t.flags)
        w.ulong(0)  # ulMaxSessionCount: CK_EFFECTIVELY_INFINITE
        w.ulong(UNAVAILABLE)
        w.ulong(0)
        w.ulong(UNAVAILABLE)
        w.ulong(255)
        w.ulong(4)
        for _ in range(4):  # memory: not known across members
            w.ulong(UNAVAILABLE)
        w.version(t.hardware_version)
        w.version(t.firmware_version)
        w.space_string("", 16)
        return w


    def c_get_mechanism_list(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        room = r.ulong_buffer()
        r.done()
        self.service.slot(slot_id, "C_GetMechanismList")
        mechs = sorted(self.service.mechanisms(slot_id))
        w = Writer(r.call_id)
        if room is None or room < len(mechs):
            w.ulong_array(None, len(mechs))
        else:
            w.ulong_array(mechs)
        return w

    def c_get_mechanism_info(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        mech = r.ulong()
        r.done()
        try:
            m = pkcs11.Mechanism(mech)
        except ValueError as e:
            raise fail(CKR.MECHANISM_INVALID, "C_GetMechanismInfo") from e
        self.service.slot(slot_id, "C_GetMechanismInfo")
        if mech not in self.service.mechanisms(slot_id):
            raise fail(CKR.MECHANISM_INVALID, "C_GetMechanismInfo")
        with self.service.engine.open_session(slot_id, rw=False) as vs:
            info = vs.mechanism_info(m)
        w = Writer(r.call_id)
        w.ulong(int(info.min_key_length))
        w.ulong(int(info.max_key_length))
        w.ulong(int(info.flags))
        return w

    # -- sessions -----------------------------------------------------------------
    def c_open_session(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        flags = r.ulong()
        r.done()
        if not flags & CKF_SERIAL_SESSION:
            raise fail(CKR.SESSION_PARALLEL_NOT_SUPPORTED, "C_OpenSession")
        self.service.slot(slot_id, "C_OpenSession")
        rw = bool(flags & CKF_RW_SESSION)
        vs = self.service.engine.open_session(slot_id, rw=rw)
        handle = next(self._handles)
        self.sessions[handle] = SessionState(vs, slot_id, rw)
        w = Writer(r.call_id)
        w.ulong(handle)
        return w

    def c_close_session(self, r: Reader) -> Writer:
        handle = r.ulong()
        r.done()
        self._session(handle, "C_CloseSession")
        self._close_session(handle)
        return Writer(r.call_id)

    def c_close_all_sessions(self, r: Reader) -> Writer:
        slot_id = r.ulong()
        r.done()
        self.service.slot(slot_id, "C_CloseAllSessions")
        for h in [h for h, s in self.sessions.items() if s.slot_id == slot_id]:
            self._close_session(h)
        return Writer(r.call_id)

    def c_get_session_info(self, r: Reader) -> Writer:
        handle = r.ulong()
        r.done()
        s = self._session(handle, "C_GetSessionInfo")
        user = self.service.logged_in(self.id, self._group_of(s.slot_id, "C_GetSessionInfo"))
        state = (CKS_RW_USER if user else CKS_RW_PUBLIC) if s.rw else \
            (CKS_RO_USER if user else CKS_RO_PUBLIC)
        w = Writer(r.call_id)
        w.ulong(s.slot_id)
        w.ulong(state)
        w.ulong(CKF_SERIAL_SESSION | (CKF_RW_SESSION if s.rw else 0))
        w.ulong(0)
        return w

    def c_login(self, r: Reader) -> Writer:
        handle = r.ulong()
        user_type = r.ulong()
        pin = r.byte_array()
        r.done()
        s = self._session(handle, "C_Login")
        if user_type != CKU_USER:
            # SO and context-specific logins are not served through the HA slot (docs/serve.md)
            raise fail(CKR.USER_TYPE_INVALID, "C_Login")
        if pin is None:
            raise fail(CKR.ARGUMENTS_BAD, "C_Login")
        try:
            text = pin.decode("utf-8")
        except UnicodeDecodeError as e:
            raise fail(CKR.PIN_INVALID, "C_Login") from e
        self.service.login(self.id, self._group_of(s.slot_id, "C_Login"), text)
        return Writer(r.call_id)

    def c_logout(self, r: Reader) -> Writer:
        handle = r.ulong()
        r.done()
        s = self._session(handle, "C_Logout")
        self.service.logout(self.id, self._group_of(s.slot_id, "C_Logout"))
        return Writer(r.call_id)

    # -- objects --------------------------------------------------------------------
    def _require_rw(self, s: SessionState, template: dict[Any, Any], operation: str) -> None:
        if template.get(Attribute.TOKEN) and not s.rw:
            raise fail(CKR.SESSION_READ_ONLY, operation)

    def c_create_object(self, r: Reader) -> Writer:
        handle = r.ulong()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_CreateObject")
        t = to_python(attrs, "C_CreateObject")
        self._require_rw(s, t, "C_CreateObject")
        w = Writer(r.call_id)
        w.ulong(s.vs.create_object(t))
        return w

    def c_copy_object(self, r: Reader) -> Writer:
        handle = r.ulong()
        obj = r.ulong()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_CopyObject")
        t = to_python(attrs, "C_CopyObject")
        self._require_rw(s, t, "C_CopyObject")
        w = Writer(r.call_id)
        w.ulong(s.vs.copy_object(obj, t))
        return w

    def c_destroy_object(self, r: Reader) -> Writer:
        handle = r.ulong()
        obj = r.ulong()
        r.done()
        self._session(handle, "C_DestroyObject").vs.destroy_object(obj)
        return Writer(r.call_id)

    def c_get_attribute_value(self, r: Reader) -> Writer:
        handle = r.ulong()
        obj = r.ulong()
        wanted = r.attribute_buffer()
        r.done()
        vs = self._session(handle, "C_GetAttributeValue").vs
        known = self._attribute_values(vs, obj, wanted)
        out: list[tuple[int, AttrValue, int]] = []
        rv = CKR.OK
        for req in wanted:
            got = known.get(req.type)
            if isinstance(got, CKR):  # unavailable: SENSITIVE or TYPE_INVALID, as the token said
                out.append((req.type, None, -1))
                rv = got if rv == CKR.OK else rv
            elif req.room == 0:  # NULL pValue: the length only
                assert got is not None
                out.append((req.type, None, native_length(got)))
            elif req.room < native_length(got):
                out.append((req.type, None, -1))
                rv = CKR.BUFFER_TOO_SMALL if rv == CKR.OK else rv
            else:
                out.append((req.type, got, native_length(got)))
        w = Writer(r.call_id)
        w.attribute_array(out)
        w.ulong(rv.rv)
        return w

    @staticmethod
    def _attribute_values(vs: VirtualSession, obj: int,
                          wanted: list[AttrRequest]) -> dict[int, bytes | CKR]:
        """Every wanted attribute's native value, or the CKR that says why it is unavailable."""
        known: dict[int, bytes | CKR] = {}
        keys = []
        for req in wanted:
            try:
                key = Attribute(req.type)
            except ValueError:
                key = None
            if key is None or key not in MAPPER.attribute_types:
                # no python-pkcs11 codec for it, so no value can come through the engine
                known[req.type] = CKR.ATTRIBUTE_TYPE_INVALID
            else:
                keys.append(key)
        try:
            values = vs.get_attributes(obj, keys) if keys else {}
        except Exception as e:  # none of them available: each is asked below
            if CKR.get(ckr_name(e)) not in UNAVAILABLE_CODES:
                raise
            values = {}
        for key in keys:
            if key in values:
                known[int(key)] = to_native(key, values[key])
                continue
            # python-pkcs11 leaves unavailable ones out: ask for that one to learn why
            try:
                known[int(key)] = to_native(key, vs.get_attribute(obj, key))
            except Exception as e:
                code = CKR.get(ckr_name(e))
                if code not in UNAVAILABLE_CODES:
                    raise
                assert code is not None
                known[int(key)] = code
        return known

    def c_set_attribute_value(self, r: Reader) -> Writer:
        handle = r.ulong()
        obj = r.ulong()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_SetAttributeValue")
        s.vs.set_attributes(obj, to_python(attrs, "C_SetAttributeValue"))
        return Writer(r.call_id)

    def c_find_objects_init(self, r: Reader) -> Writer:
        handle = r.ulong()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_FindObjectsInit")
        if s.found is not None:
            raise fail(CKR.OPERATION_ACTIVE, "C_FindObjectsInit")
        s.found = s.vs.find_objects(to_python(attrs, "C_FindObjectsInit"))
        return Writer(r.call_id)

    def c_find_objects(self, r: Reader) -> Writer:
        handle = r.ulong()
        room = r.ulong_buffer()
        r.done()
        s = self._session(handle, "C_FindObjects")
        if s.found is None:
            raise fail(CKR.OPERATION_NOT_INITIALIZED, "C_FindObjects")
        n = room or 0
        out, s.found = s.found[:n], s.found[n:]
        w = Writer(r.call_id)
        w.ulong_array(out)
        return w

    def c_find_objects_final(self, r: Reader) -> Writer:
        handle = r.ulong()
        r.done()
        s = self._session(handle, "C_FindObjectsFinal")
        if s.found is None:
            raise fail(CKR.OPERATION_NOT_INITIALIZED, "C_FindObjectsFinal")
        s.found = None
        return Writer(r.call_id)

    # -- key generation -----------------------------------------------------------
    def c_generate_key(self, r: Reader) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_GenerateKey")
        m, key_type = generation(mech, KEYGEN_TYPES, "C_GenerateKey")
        t, args = self._new_key(s, attrs, "C_GenerateKey")
        length = t.pop(Attribute.VALUE_LEN, None)
        w = Writer(r.call_id)
        w.ulong(s.vs.generate_key(key_type, length * 8 if length else None, template=t,
                                  mechanism=m, **args))
        return w

    def c_generate_key_pair(self, r: Reader) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        pub_attrs = r.attribute_array()
        priv_attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_GenerateKeyPair")
        m, key_type = generation(mech, KEYPAIR_TYPES, "C_GenerateKeyPair")
        pub = to_python(pub_attrs, "C_GenerateKeyPair")
        priv = to_python(priv_attrs, "C_GenerateKeyPair")
        token = bool(priv.pop(Attribute.TOKEN, False) or pub.get(Attribute.TOKEN, False))
        self._require_rw(s, {Attribute.TOKEN: token}, "C_GenerateKeyPair")
        pub.pop(Attribute.TOKEN, None)
        bits = pub.pop(Attribute.MODULUS_BITS, None)
        label = priv.pop(Attribute.LABEL, None) or pub.get(Attribute.LABEL)
        pub.pop(Attribute.LABEL, None)
        kid = priv.pop(Attribute.ID, None) or pub.get(Attribute.ID)
        pub.pop(Attribute.ID, None)
        pub_h, priv_h = s.vs.generate_keypair(key_type, bits, label=label, id=kid, token=token,
                                              public_template=pub, private_template=priv,
                                              mechanism=m)
        w = Writer(r.call_id)
        w.ulong(pub_h)
        w.ulong(priv_h)
        return w

    # -- wrap, unwrap, derive ---------------------------------------------------------
    def c_wrap_key(self, r: Reader) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        wrapping = r.ulong()
        key = r.ulong()
        room = r.byte_buffer()
        r.done()
        s = self._session(handle, "C_WrapKey")
        m, param = required_mechanism(mech, "C_WrapKey")
        ident = (int(m), wrapping, key)
        if s.wrapped is None or s.wrapped[0] != ident:
            s.wrapped = (ident, s.vs.wrap_key(wrapping, key, m, param))
        blob = s.wrapped[1]
        w = Writer(r.call_id)
        if room is None or room < len(blob):  # the length; the blob is kept for the next call
            w.byte_array(None, len(blob))
        else:
            w.byte_array(blob)
            s.wrapped = None
        return w

    def _new_key(self, s: SessionState, attrs: list[Attr],
                 operation: str) -> tuple[dict[Any, Any], dict[str, Any]]:
        """A new key's template split into what the engine takes as arguments and the
        rest; a token key needs a R/W session."""
        t = to_python(attrs, operation)
        args = {"label": t.pop(Attribute.LABEL, None), "id": t.pop(Attribute.ID, None),
                "token": bool(t.pop(Attribute.TOKEN, False))}
        self._require_rw(s, {Attribute.TOKEN: args["token"]}, operation)
        return t, args

    def c_unwrap_key(self, r: Reader) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        unwrapping = r.ulong()
        blob = r.byte_array() or b""
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_UnwrapKey")
        m, param = required_mechanism(mech, "C_UnwrapKey")
        t, args = self._new_key(s, attrs, "C_UnwrapKey")
        cls, key_type = t.pop(Attribute.CLASS, None), t.pop(Attribute.KEY_TYPE, None)
        if cls is None or key_type is None:
            raise fail(CKR.TEMPLATE_INCOMPLETE, "C_UnwrapKey")
        w = Writer(r.call_id)
        w.ulong(s.vs.unwrap_key(unwrapping, blob, cls, key_type, template=t, mechanism=m,
                                mechanism_param=param, **args))
        return w

    def c_derive_key(self, r: Reader) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        base = r.ulong()
        attrs = r.attribute_array()
        r.done()
        s = self._session(handle, "C_DeriveKey")
        m, param = required_mechanism(mech, "C_DeriveKey")
        t, args = self._new_key(s, attrs, "C_DeriveKey")
        t.pop(Attribute.CLASS, None)  # a derived key is a secret key
        key_type = t.pop(Attribute.KEY_TYPE, None)
        length = t.pop(Attribute.VALUE_LEN, None)
        if key_type is None or not length:
            raise fail(CKR.TEMPLATE_INCOMPLETE, "C_DeriveKey")
        w = Writer(r.call_id)
        w.ulong(s.vs.derive_key(base, key_type, length * 8, mechanism=m, mechanism_param=param,
                                template=t, **args))
        return w

    # -- random ----------------------------------------------------------------------
    def c_generate_random(self, r: Reader) -> Writer:
        handle = r.ulong()
        room = r.byte_buffer()
        r.done()
        s = self._session(handle, "C_GenerateRandom")
        if room and room > MAX_FRAME:  # the answer must fit in a frame
            raise fail(CKR.ARGUMENTS_BAD, "C_GenerateRandom")
        w = Writer(r.call_id)
        if not room:
            w.byte_array(None, 0) if room is None else w.byte_array(b"")
            return w
        w.byte_array(s.vs.generate_random(room))
        return w

    def c_seed_random(self, r: Reader) -> Writer:
        handle = r.ulong()
        seed = r.byte_array()
        r.done()
        self._session(handle, "C_SeedRandom").vs.seed_random(seed or b"")
        return Writer(r.call_id)

    # -- crypto operations -------------------------------------------------------------
    def _init(self, r: Reader, kind: str, keyed: bool = True) -> Writer:
        handle = r.ulong()
        mech = r.mechanism()
        key = r.ulong() if keyed else None
        r.done()
        fn = f"C_{kind.capitalize()}Init"
        s = self._session(handle, fn)
        if mech is None:  # the NULL mechanism cancels the operation
            self._end(s, kind)
            return Writer(r.call_id)
        if kind in s.ops:
            raise fail(CKR.OPERATION_ACTIVE, fn)
        m, param = to_mechanism(mech, fn)
        # the engine starts the operation at its first step; what PKCS#11 checks at
        # init is checked here, so that a caller probing mechanisms gets its answer now
        if int(m) not in self.service.mechanisms(s.slot_id):
            raise fail(CKR.MECHANISM_INVALID, fn)
        if key is not None:
            try:
                s.vs.group.vobject(key, fn)
            except CKRError as e:
                raise fail(CKR.KEY_HANDLE_INVALID, fn) from e
        s.ops[kind] = Operation(kind, key, m, param)
        return Writer(r.call_id)

    def _op(self, s: SessionState, kind: str, operation: str) -> Operation:
        op = s.ops.get(kind)
        if op is None:
            raise fail(CKR.OPERATION_NOT_INITIALIZED, operation)
        return op

    @staticmethod
    def _end(s: SessionState, kind: str) -> None:
        op = s.ops.pop(kind, None)
        if op is not None and op.started:
            try:  # end the engine's multi-part operation; its result is not wanted
                getattr(s.vs, f"{kind}_final")(*((b"",) if kind == "verify" else ()))
            except Exception:
                LOG.debug("ending a cancelled %s operation", kind, exc_info=True)

    def _begin(self, s: SessionState, op: Operation) -> None:
        """Start the engine's multi-part operation at the first update."""
        if op.started:
            return
        if op.kind == "digest":
            s.vs.digest_init(op.mechanism, op.param)
        else:
            getattr(s.vs, f"{op.kind}_init")(op.key, op.mechanism, op.param)
        op.started = True

    def _answer(self, r: Reader, s: SessionState, op: Operation, room: int | None,
                compute: Callable[[], bytes], ends: bool) -> Writer:
        """Output with PKCS#11 length semantics: a length query or a too small buffer
        keeps the answer (and the operation); a big enough buffer takes it."""
        try:
            if op.answer is None:
                op.answer = compute()
        except Exception:
            s.ops.pop(op.kind, None)  # an error ends the operation
            raise
        w = Writer(r.call_id)
        if op.answer and (room is None or room < len(op.answer)):
            # the length, no data: the client answers CKR_OK to a length query and
            # CKR_BUFFER_TOO_SMALL to a buffer, with the length either way (as p11-kit)
            w.byte_array(None, len(op.answer))
        else:
            w.byte_array(op.answer)
            op.answer = None
            if ends:
                s.ops.pop(op.kind, None)
        return w

    def _single(self, r: Reader, kind: str) -> Writer:
        handle = r.ulong()
        data = r.byte_array() or b""
        room = r.byte_buffer()
        r.done()
        fn = f"C_{kind.capitalize()}"
        s = self._session(handle, fn)
        op = self._op(s, kind, fn)
        if op.started:
            raise fail(CKR.OPERATION_ACTIVE, fn)
        call = getattr(s.vs, kind)
        if kind == "digest":
            return self._answer(r, s, op, room, lambda: call(data, op.mechanism, op.param), True)
        return self._answer(r, s, op, room,
                            lambda: call(op.key, data, op.mechanism, op.param), True)

    def _update(self, r: Reader, kind: str, output: bool) -> Writer:
        handle = r.ulong()
        data = r.byte_array() or b""
        room = r.byte_buffer() if output else None
        r.done()
        fn = f"C_{kind.capitalize()}Update"
        s = self._session(handle, fn)
        op = self._op(s, kind, fn)

        def step() -> bytes:
            self._begin(s, op)
            out = getattr(s.vs, f"{kind}_update")(data)
            return out if isinstance(out, bytes) else b""

        if output:
            return self._answer(r, s, op, room, step, False)
        try:
            step()
        except Exception:
            s.ops.pop(kind, None)
            raise
        return Writer(r.call_id)

    def _final(self, r: Reader, kind: str) -> Writer:
        handle = r.ulong()
        room = r.byte_buffer()
        r.done()
        fn = f"C_{kind.capitalize()}Final"
        s = self._session(handle, fn)
        op = self._op(s, kind, fn)

        def final() -> bytes:
            self._begin(s, op)
            out: bytes = getattr(s.vs, f"{kind}_final")()
            return out

        return self._answer(r, s, op, room, final, True)

    def c_verify(self, r: Reader) -> Writer:
        handle = r.ulong()
        data = r.byte_array() or b""
        sig = r.byte_array() or b""
        r.done()
        s = self._session(handle, "C_Verify")
        op = self._op(s, "verify", "C_Verify")
        s.ops.pop("verify")
        if op.started:
            raise fail(CKR.OPERATION_ACTIVE, "C_Verify")
        if not s.vs.verify(op.key or 0, data, sig, op.mechanism, op.param):
            raise fail(CKR.SIGNATURE_INVALID, "C_Verify")
        return Writer(r.call_id)

    def c_verify_final(self, r: Reader) -> Writer:
        handle = r.ulong()
        sig = r.byte_array() or b""
        r.done()
        s = self._session(handle, "C_VerifyFinal")
        op = self._op(s, "verify", "C_VerifyFinal")
        s.ops.pop("verify")
        self._begin(s, op)
        if not s.vs.verify_final(sig):
            raise fail(CKR.SIGNATURE_INVALID, "C_VerifyFinal")
        return Writer(r.call_id)


def _kind(kind: str, what: str, output: bool = True) -> Callable[[ClientState, Reader], Writer]:
    """A handler for one step of one kind of crypto operation."""
    if what == "init":
        return lambda c, r: c._init(r, kind, keyed=kind != "digest")
    if what == "single":
        return lambda c, r: c._single(r, kind)
    if what == "update":
        return lambda c, r: c._update(r, kind, output)
    return lambda c, r: c._final(r, kind)


#: call name -> handler; every other call answers CKR_FUNCTION_NOT_SUPPORTED
HANDLERS: dict[str, Callable[[ClientState, Reader], Writer]] = {
    "C_Initialize": ClientState.c_initialize,
    "C_Finalize": ClientState.c_finalize,
    "C_GetInfo": ClientState.c_get_info,
    "C_GetSlotList": ClientState.c_get_slot_list,
    "C_GetSlotInfo": ClientState.c_get_slot_info,
    "C_GetTokenInfo": ClientState.c_get_token_info,
    "C_GetMechanismList": ClientState.c_get_mechanism_list,
    "C_GetMechanismInfo": ClientState.c_get_mechanism_info,
    "C_OpenSession": ClientState.c_open_session,
    "C_CloseSession": ClientState.c_close_session,
    "C_CloseAllSessions": ClientState.c_close_all_sessions,
    "C_GetSessionInfo": ClientState.c_get_session_info,
    "C_Login": ClientState.c_login,
    "C_Logout": ClientState.c_logout,
    "C_CreateObject": ClientState.c_create_object,
    "C_CopyObject": ClientState.c_copy_object,
    "C_DestroyObject": ClientState.c_destroy_object,
    "C_GetAttributeValue": ClientState.c_get_attribute_value,
    "C_SetAttributeValue": ClientState.c_set_attribute_value,
    "C_FindObjectsInit": ClientState.c_find_objects_init,
    "C_FindObjects": ClientState.c_find_objects,
    "C_FindObjectsFinal": ClientState.c_find_objects_final,
    "C_GenerateKey": ClientState.c_generate_key,
    "C_GenerateKeyPair": ClientState.c_generate_key_pair,
    "C_WrapKey": ClientState.c_wrap_key,
    "C_UnwrapKey": ClientState.c_unwrap_key,
    "C_DeriveKey": ClientState.c_derive_key,
    "C_GenerateRandom": ClientState.c_generate_random,
    "C_SeedRandom": ClientState.c_seed_random,
    "C_Verify": ClientState.c_verify,
    "C_VerifyFinal": ClientState.c_verify_final,
    "C_VerifyInit": _kind("verify", "init"),
    "C_VerifyUpdate": _kind("verify", "update", output=False),
    **{f"C_{k.capitalize()}Init": _kind(k, "init")
       for k in ("sign", "encrypt", "decrypt", "digest")},
    **{f"C_{k.capitalize()}": _kind(k, "single")
       for k in ("sign", "encrypt", "decrypt", "digest")},
    **{f"C_{k.capitalize()}Update": _kind(k, "update", output=k in ("encrypt", "decrypt"))
       for k in ("sign", "encrypt", "decrypt", "digest")},
    **{f"C_{k.capitalize()}Final": _kind(k, "final")
       for k in ("sign", "encrypt", "decrypt", "digest")},
}
