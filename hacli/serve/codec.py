"""p11-kit RPC messages, read from p11-kit's ``rpc-message.c/.h`` (0.24.1 and 0.25.5).

A message body is the call id (uint32), the call's signature as a byte array
(checked against the table below), then the arguments in signature order.
All integers are big-endian; a CK_ULONG travels as uint64.  Signature parts:

====  =====================================================================
y     one byte
u     a CK_ULONG (uint64)
ay    byte array: a *valid* byte, then either (uint32 length, bytes) or, when
      the byte is 0, just a uint32 length (a length answer: no data)
fy    byte buffer: uint32 room the caller has (0 = a length query,
      0xffffffff = a buffer of length 0)
au    ulong array: valid byte, uint32 count, the values when valid
fu    ulong buffer: uint32 room
aA    attribute array: uint32 count, then per attribute: uint32 type, a
      validity byte (0 = CK_UNAVAILABLE_INFORMATION), uint32 native length,
      the value encoded by the attribute's *value type* (:func:`value_type`)
fA    attribute buffer: uint32 count, per attribute uint32 type and uint32
      room (in protocol version 1, a template attribute with room is followed
      by its own nested attribute buffer)
M     mechanism: uint32 type (0xffffffff = NULL mechanism), its parameter
      (a byte array, or a typed encoding for the mechanisms in MECH_PARAMS)
s     space-padded string (byte array of fixed length); z: byte array
v     CK_VERSION: two bytes
====  =====================================================================

Attribute values are held here in their *native* form (what a C caller has
in ``pValue``): booleans one byte, CK_ULONG eight bytes little-endian, dates
eight ASCII digits, template attributes a list of :class:`Attr`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TypeAlias

from hacli.serve.wire import ProtocolError

#: (name, request signature, response signature) by call id; p11-kit's p11_rpc_calls
CALLS: tuple[tuple[str, str, str], ...] = (
    ("ERROR", "", "u"),
    ("C_Initialize", "ayyay", ""),
    ("C_Finalize", "", ""),
    ("C_GetInfo", "", "vsusv"),
    ("C_GetSlotList", "yfu", "au"),
    ("C_GetSlotInfo", "u", "ssuvv"),
    ("C_GetTokenInfo", "u", "ssssuuuuuuuuuuuvvs"),
    ("C_GetMechanismList", "ufu", "au"),
    ("C_GetMechanismInfo", "uu", "uuu"),
    ("C_InitToken", "uayz", ""),
    ("C_OpenSession", "uu", "u"),
    ("C_CloseSession", "u", ""),
    ("C_CloseAllSessions", "u", ""),
    ("C_GetSessionInfo", "u", "uuuu"),
    ("C_InitPIN", "uay", ""),
    ("C_SetPIN", "uayay", ""),
    ("C_GetOperationState", "ufy", "ay"),
    ("C_SetOperationState", "uayuu", ""),
    ("C_Login", "uuay", ""),
    ("C_Logout", "u", ""),
    ("C_CreateObject", "uaA", "u"),
    ("C_CopyObject", "uuaA", "u"),
    ("C_DestroyObject", "uu", ""),
    ("C_GetObjectSize", "uu", "u"),
    ("C_GetAttributeValue", "uufA", "aAu"),
    ("C_SetAttributeValue", "uuaA", ""),
    ("C_FindObjectsInit", "uaA", ""),
    ("C_FindObjects", "ufu", "au"),
    ("C_FindObjectsFinal", "u", ""),
    ("C_EncryptInit", "uMu", ""),
    ("C_Encrypt", "uayfy", "ay"),
    ("C_EncryptUpdate", "uayfy", "ay"),
    ("C_EncryptFinal", "ufy", "ay"),
    ("C_DecryptInit", "uMu", ""),
    ("C_Decrypt", "uayfy", "ay"),
    ("C_DecryptUpdate", "uayfy", "ay"),
    ("C_DecryptFinal", "ufy", "ay"),
    ("C_DigestInit", "uM", ""),
    ("C_Digest", "uayfy", "ay"),
    ("C_DigestUpdate", "uay", ""),
    ("C_DigestKey", "uu", ""),
    ("C_DigestFinal", "ufy", "ay"),
    ("C_SignInit", "uMu", ""),
    ("C_Sign", "uayfy", "ay"),
    ("C_SignUpdate", "uay", ""),
    ("C_SignFinal", "ufy", "ay"),
    ("C_SignRecoverInit", "uMu", ""),
    ("C_SignRecover", "uayfy", "ay"),
    ("C_VerifyInit", "uMu", ""),
    ("C_Verify", "uayay", ""),
    ("C_VerifyUpdate", "uay", ""),
    ("C_VerifyFinal", "uay", ""),
    ("C_VerifyRecoverInit", "uMu", ""),
    ("C_VerifyRecover", "uayfy", "ay"),
    ("C_DigestEncryptUpdate", "uayfy", "ay"),
    ("C_DecryptDigestUpdate", "uayfy", "ay"),
    ("C_SignEncryptUpdate", "uayfy", "ay"),
    ("C_DecryptVerifyUpdate", "uayfy", "ay"),
    ("C_GenerateKey", "uMaA", "u"),
    ("C_GenerateKeyPair", "uMaAaA", "uu"),
    ("C_WrapKey", "uMuufy", "ay"),
    ("C_UnwrapKey", "uMuayaA", "u"),
    ("C_DeriveKey", "uMuaA", "u"),
    ("C_SeedRandom", "uay", ""),
    ("C_GenerateRandom", "ufy", "ay"),
    ("C_WaitForSlotEvent", "u", "u"),
    # PKCS #11 3.0 (p11-kit 0.25): parsed so that they can be refused cleanly
    ("C_LoginUser", "uuayay", ""),
    ("C_SessionCancel", "uu", ""),
    ("C_MessageEncryptInit", "uMu", ""),
    ("C_EncryptMessage", "uayayayfy", "ay"),
    ("C_EncryptMessageBegin", "uayay", ""),
    ("C_EncryptMessageNext", "uayayfyu", "ay"),
    ("C_MessageEncryptFinal", "u", ""),
    ("C_MessageDecryptInit", "uMu", ""),
    ("C_DecryptMessage", "uayayayfy", "ay"),
    ("C_DecryptMessageBegin", "uayay", ""),
    ("C_DecryptMessageNext", "uayayfyu", "ay"),
    ("C_MessageDecryptFinal", "u", ""),
    ("C_MessageSignInit", "uMu", ""),
    ("C_SignMessage", "uayayfy", "ay"),
    ("C_SignMessageBegin", "uay", ""),
    ("C_SignMessageNext", "uayayyfy", "ay"),
    ("C_MessageSignFinal", "u", ""),
    ("C_MessageVerifyInit", "uMu", ""),
    ("C_VerifyMessage", "uayayay", ""),
    ("C_VerifyMessageBegin", "uay", ""),
    ("C_VerifyMessageNext", "uayayay", ""),
    ("C_MessageVerifyFinal", "u", ""),
    ("C_InitToken2", "uays", ""),
    ("C_DeriveKey2", "uMuaA", "uPu"),
)

#: call name -> call id
CALL_IDS: dict[str, int] = {name: i for i, (name, _req, _resp) in enumerate(CALLS)}

#: a template attribute (CKF_ARRAY_ATTRIBUTE set in its type)
ARRAY_ATTRIBUTE = 0x40000000
#: sizeof(CK_ATTRIBUTE) on LP64: a template's native length is count * this
ATTRIBUTE_SIZE = 24
#: the byte-array length that means NULL
NULL_LENGTH = 0xFFFFFFFF
#: the mechanism type that means "NULL mechanism" (cancels an operation)
NULL_MECHANISM = 0xFFFFFFFF
#: nesting of template attributes, as p11-kit's P11_RPC_MAX_RECURSION_DEPTH
MAX_DEPTH = 8

_ULONG = struct.Struct("<Q")  # native CK_ULONG on the x86_64 hosts p11-kit-client runs on


class ValueType(enum.IntEnum):
    """How an attribute value travels (p11-kit's p11_rpc_value_type)."""

    BYTE = 0
    ULONG = 1
    ATTRIBUTE_ARRAY = 2
    MECHANISM_TYPE_ARRAY = 3
    DATE = 4
    BYTE_ARRAY = 5


_BYTE_ATTRS = (0x001, 0x002, 0x086, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109,
               0x10A, 0x10B, 0x10C, 0x162, 0x163, 0x164, 0x165, 0x170, 0x200, 0x202,
               0x210, 0x301, 0x302, 0x405, 0x80000000 + 0x20)
_ULONG_ATTRS = (0x000, 0x080, 0x087, 0x088, 0x100, 0x121, 0x133, 0x134, 0x160, 0x161,
                0x166, 0x201, 0x300, 0x400, 0x401, 0x402, 0x403, 0x404, 0x406, 0x500)
#: attribute type -> value type; anything else travels as a byte array
VALUE_TYPES: dict[int, ValueType] = {
    **{a: ValueType.BYTE for a in _BYTE_ATTRS},
    **{a: ValueType.ULONG for a in _ULONG_ATTRS},
    0x40000211: ValueType.ATTRIBUTE_ARRAY,  # CKA_WRAP_TEMPLATE
    0x40000212: ValueType.ATTRIBUTE_ARRAY,  # CKA_UNWRAP_TEMPLATE
    0x40000213: ValueType.ATTRIBUTE_ARRAY,  # CKA_DERIVE_TEMPLATE
    0x40000600: ValueType.MECHANISM_TYPE_ARRAY,  # CKA_ALLOWED_MECHANISMS
    0x110: ValueType.DATE,  # CKA_START_DATE
    0x111: ValueType.DATE,  # CKA_END_DATE
}


def value_type(attr_type: int) -> ValueType:
    """The wire encoding of an attribute's value (p11-kit's map_attribute_to_value_type)."""
    return VALUE_TYPES.get(attr_type, ValueType.BYTE_ARRAY)


AttrValue: TypeAlias = bytes | list["Attr"] | None


@dataclass
class Attr:
    """One attribute; ``value`` None is CK_UNAVAILABLE_INFORMATION."""

    type: int
    value: AttrValue
    #: the ulValueLen that came with it (a length answer has a length, no value)
    length: int = field(default=-1, compare=False)


@dataclass
class AttrRequest:
    """One entry of an attribute buffer: the room the caller has (0 = a length query)."""

    type: int
    room: int


class MechParam(enum.Enum):
    """Typed mechanism parameter encodings (p11-kit's p11_rpc_mechanism_serializers)."""

    PSS = "hash, mgf, salt length"
    OAEP = "hash, mgf, source, source data"
    ECDH1 = "kdf, shared data, public data"
    IV16 = "16-byte IV"
    IV8 = "8-byte IV"
    CTR = "counter bits, 16-byte block"
    GCM = "iv, iv bits, aad, tag bits"
    ULONG = "one CK_ULONG"


MECH_PARAMS: dict[int, MechParam] = {
    0x0D: MechParam.PSS, 0x0E: MechParam.PSS, 0x43: MechParam.PSS, 0x44: MechParam.PSS,
    0x45: MechParam.PSS, 0x46: MechParam.PSS,
    0x09: MechParam.OAEP,
    0x1050: MechParam.ECDH1,
    **{m: MechParam.IV16 for m in (0x1082, 0x1085, 0x2104, 0x2108, 0x2105, 0x2106, 0x2107, 0x1089)},
    0x1086: MechParam.CTR,
    0x1087: MechParam.GCM,
    **{m: MechParam.IV8 for m in (0x122, 0x125, 0x133, 0x136, 0x152, 0x153, 0x154)},
    **{m: MechParam.ULONG for m in (0x222, 0x258, 0x268, 0x278, 0x4A, 0x4E, 0x1084,
                                    0x108B, 0x135, 0x138)},
}


@dataclass
class Mechanism:
    """A decoded CK_MECHANISM: its parameter is bytes, or a tuple for typed ones."""

    type: int
    param: bytes | tuple[int | bytes | None, ...] | None


class Reader:
    """Parses a request body in signature order; any mismatch is a :class:`ProtocolError`."""

    def __init__(self, body: bytes, version: int = 1, response: bool = False) -> None:
        self.data = body
        self.pos = 0
        self.version = version
        call_id = self._u32()
        if (call_id == 0 and not response) or call_id >= len(CALLS):
            raise ProtocolError(f"bad call id {call_id}")
        self.call_id = call_id
        self.name, request_sig, response_sig = CALLS[call_id]
        self.signature = response_sig if response else request_sig
        sig = self._bytes_or_null()
        if sig is None or sig.decode("latin-1") != self.signature:
            raise ProtocolError(f"{self.name}: signature does not match")
        self._left = self.signature

    # -- raw ---------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _u8(self) -> int:
        return self._take(1)[0]

    def _u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def _u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def _bytes_or_null(self) -> bytes | None:
        n = self._u32()
        if n == NULL_LENGTH:
            return None
        if n >= 0x7FFFFFFF:
            raise ProtocolError("byte array too long")
        return self._take(n)

    def _part(self, part: str) -> None:
        if not self._left.startswith(part):
            raise ProtocolError(f"{self.name}: expected {self._left[:2]!r}, read {part!r}")
        self._left = self._left[len(part):]

    # -- typed -------------------------------------------------------------
    def byte(self) -> int:
        self._part("y")
        return self._u8()

    def ulong(self) -> int:
        self._part("u")
        return self._u64()

    def byte_array(self) -> bytes | None:
        """An ``ay``: bytes, or None when the caller sent only a length (no data)."""
        self._part("ay")
        if not self._u8():
            self._u32()
            return None
        return self._bytes_or_null() or b""

    def byte_buffer(self) -> int | None:
        """An ``fy``: the caller's room; None = a length query (NULL buffer)."""
        self._part("fy")
        n = self._u32()
        if n == 0:
            return None
        return 0 if n == NULL_LENGTH else n

    def ulong_buffer(self) -> int | None:
        """An ``fu``: the caller's room in CK_ULONGs; None = a length query."""
        self._part("fu")
        n = self._u32()
        return None if n == 0 else n

    def ulong_array(self) -> list[int] | int:
        """An ``au`` (in a response): the values, or only their count when not valid."""
        self._part("au")
        valid = self._u8()
        n = self._u32() if valid else None
        if n is None:
            return self._u32()
        if n * 8 > len(self.data) - self.pos:
            raise ProtocolError(f"count {n} past the end of the message")
        return [self._u64() for _ in range(n)]

    def zero_string(self) -> bytes:
        self._part("z")
        return self._bytes_or_null() or b""

    def space_string(self, length: int) -> bytes:
        self._part("s")
        data = self._bytes_or_null() or b""
        if len(data) != length:
            raise ProtocolError(f"space string of {len(data)} bytes, {length} expected")
        return data

    def attribute_buffer(self) -> list[AttrRequest]:
        self._part("fA")
        return self._attribute_buffer(0)

    @staticmethod
    def _nest(depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ProtocolError("attribute templates nested too deep")

    def _attribute_buffer(self, depth: int) -> list[AttrRequest]:
        self._nest(depth)
        out = []
        for _ in range(self._count()):
            t, room = self._u32(), self._u32()
            # p11-kit 0.25 (protocol 1) nests a template's own buffer; 0.24 does not
            if room and t & ARRAY_ATTRIBUTE and self.version >= 1:
                self._attribute_buffer(depth + 1)
            out.append(AttrRequest(t, room))
        return out

    def _count(self) -> int:
        n = self._u32()
        # every entry takes at least 5 bytes: a count past what is left is garbage
        if n * 5 > len(self.data) - self.pos:
            raise ProtocolError(f"count {n} past the end of the message")
        return n

    def attribute_array(self) -> list[Attr]:
        self._part("aA")
        return self._attributes(0)

    def _attributes(self, depth: int) -> list[Attr]:
        self._nest(depth)
        return [self._attribute(depth) for _ in range(self._count())]

    def _attribute(self, depth: int) -> Attr:
        t = self._u32()
        if not self._u8():
            return Attr(t, None)
        length = self._u32()
        vt = value_type(t)
        value: AttrValue
        if vt is ValueType.BYTE:
            value = bytes([self._u8()])[:length]
        elif vt is ValueType.ULONG:
            value = _ULONG.pack(self._u64())[:length]
        elif vt is ValueType.ATTRIBUTE_ARRAY:
            value = self._attributes(depth + 1)
        elif vt is ValueType.MECHANISM_TYPE_ARRAY:
            value = b"".join(_ULONG.pack(self._u64()) for _ in range(self._count()))
        else:  # DATE and BYTE_ARRAY: a byte array (NULL = no value)
            value = self._bytes_or_null() or b""
            if vt is ValueType.DATE and len(value) not in (0, 8):
                raise ProtocolError("a date of neither 0 nor 8 bytes")
        return Attr(t, value, length)

    def mechanism(self) -> Mechanism | None:
        """An ``M``; None is the NULL mechanism (an init that cancels)."""
        self._part("M")
        mech = self._u32()
        if mech == NULL_MECHANISM:
            return None
        kind = MECH_PARAMS.get(mech)
        param: bytes | tuple[int | bytes | None, ...] | None
        if kind is MechParam.PSS:
            param = (self._u64(), self._u64(), self._u64())
        elif kind is MechParam.OAEP:
            param = (self._u64(), self._u64(), self._u64(), self._bytes_or_null())
        elif kind is MechParam.ECDH1:
            param = (self._u64(), self._bytes_or_null(), self._bytes_or_null())
        elif kind in (MechParam.IV16, MechParam.IV8):
            param = self._bytes_or_null()
            if param is None or len(param) != (16 if kind is MechParam.IV16 else 8):
                raise ProtocolError("an IV of the wrong length")
        elif kind is MechParam.CTR:
            param = (self._u64(), self._bytes_or_null())
        elif kind is MechParam.GCM:
            param = (self._bytes_or_null(), self._u64(), self._bytes_or_null(), self._u64())
        elif kind is MechParam.ULONG:
            param = (self._u64(),)
        else:
            param = self._bytes_or_null()
        return Mechanism(mech, param)

    def done(self) -> None:
        """Every part of the signature read, and nothing more."""
        if self._left:
            raise ProtocolError(f"{self.name}: {self._left!r} not read")
        if self.pos != len(self.data):
            raise ProtocolError(f"{self.name}: {len(self.data) - self.pos} bytes left over")


class Writer:
    """Builds a response body for one call (or the ERROR response); with
    ``request=True`` a request body, as a client sends it (tests, probes)."""

    def __init__(self, call_id: int, request: bool = False) -> None:
        self.name, req, resp = CALLS[call_id]
        self.signature = req if request else resp
        self._left = self.signature
        sig = self.signature.encode()
        self.buf = bytearray(call_id.to_bytes(4, "big") + len(sig).to_bytes(4, "big") + sig)

    @classmethod
    def error(cls, rv: int) -> bytes:
        """The ERROR response carrying a return code."""
        w = cls(0)
        w.ulong(rv)
        return w.finish()

    def _part(self, part: str) -> None:
        # a programming error here is ours, not the peer's
        assert self._left.startswith(part), (self.name, self._left, part)
        self._left = self._left[len(part):]

    def _u32(self, v: int) -> None:
        self.buf += v.to_bytes(4, "big")

    def _u64(self, v: int) -> None:
        self.buf += v.to_bytes(8, "big")

    def _bytes(self, data: bytes | None) -> None:
        if data is None:
            self._u32(NULL_LENGTH)
        else:
            self._u32(len(data))
            self.buf += data

    def byte(self, v: int) -> None:
        self._part("y")
        self.buf.append(v)

    def ulong(self, v: int) -> None:
        self._part("u")
        self._u64(v)

    def version(self, v: tuple[int, int]) -> None:
        self._part("v")
        self.buf += bytes(v)

    def space_string(self, text: str | bytes, length: int) -> None:
        self._part("s")
        raw = text.encode("utf-8") if isinstance(text, str) else text
        self._bytes(raw[:length].ljust(length, b" "))

    def byte_array(self, data: bytes | None, length: int = 0) -> None:
        """``data``; or, with None, only ``length`` (a length answer or BUFFER_TOO_SMALL)."""
        self._part("ay")
        if data is None and length == 0:
            # as p11-kit's server writes a NULL array of no length: valid, NULL
            # (0.24.1 clients send a 0-length buffer as a length query)
            self.buf.append(1)
            self._u32(NULL_LENGTH)
        elif data is None:
            self.buf.append(0)
            self._u32(length)
        else:
            self.buf.append(1)
            self._bytes(data)

    def ulong_array(self, values: list[int] | None, count: int = 0) -> None:
        self._part("au")
        self.buf.append(0 if values is None else 1)
        self._u32(count if values is None else len(values))
        for v in values or ():
            self._u64(v)

    def attribute_array(self, attrs: list[tuple[int, AttrValue, int]]) -> None:
        """Entries ``(type, value, native length)``: value None with length -1 is
        CK_UNAVAILABLE_INFORMATION, None with a length a length answer."""
        self._part("aA")
        self._u32(len(attrs))
        for t, value, length in attrs:
            self._attribute(t, value, length)

    def _attribute(self, t: int, value: AttrValue, length: int) -> None:
        self._u32(t)
        if length < 0:
            self.buf.append(0)
            return
        self.buf.append(1)
        self._u32(length)
        vt = value_type(t)
        if vt is ValueType.BYTE:
            self.buf.append(value[0] if isinstance(value, bytes) and value else 0)
        elif vt is ValueType.ULONG:
            raw = value if isinstance(value, bytes) else b""
            self._u64(_ULONG.unpack(raw.ljust(8, b"\0")[:8])[0])
        elif vt is ValueType.ATTRIBUTE_ARRAY:
            inner = value if isinstance(value, list) else []
            self._u32(len(inner))
            for a in inner:
                self._attribute(a.type, a.value, native_length(a.value))
        elif vt is ValueType.MECHANISM_TYPE_ARRAY:
            raw = value if isinstance(value, bytes) else b""
            self._u32(len(raw) // 8)
            for i in range(0, len(raw) - len(raw) % 8, 8):
                self._u64(_ULONG.unpack(raw[i:i + 8])[0])
        else:
            self._bytes(value if isinstance(value, bytes) else None)

    # -- request-only parts (what a client writes) --------------------------------
    def byte_buffer(self, room: int | None) -> None:
        """``fy``: None = NULL buffer (a length query), 0 = an empty buffer."""
        self._part("fy")
        self._u32(0 if room is None else (NULL_LENGTH if room == 0 else room))

    def ulong_buffer(self, room: int | None) -> None:
        self._part("fu")
        self._u32(room or 0)

    def attribute_buffer(self, wanted: list[AttrRequest]) -> None:
        """``fA`` without nested templates (as p11-kit 0.24 writes it)."""
        self._part("fA")
        self._u32(len(wanted))
        for a in wanted:
            self._u32(a.type)
            self._u32(a.room)

    def mechanism(self, mech: Mechanism | None) -> None:
        """``M`` for a mechanism whose parameter is a byte array (or None)."""
        self._part("M")
        if mech is None:
            self._u32(NULL_MECHANISM)
            return
        assert mech.type not in MECH_PARAMS and not isinstance(mech.param, tuple)
        self._u32(mech.type)
        self._bytes(mech.param)

    def zero_string(self, data: bytes) -> None:
        self._part("z")
        self._bytes(data)

    def finish(self) -> bytes:
        assert not self._left, (self.name, self._left)
        return bytes(self.buf)


def native_length(value: AttrValue) -> int:
    """The ``ulValueLen`` a C caller sees for a value (-1: unavailable)."""
    if value is None:
        return -1
    if isinstance(value, list):
        return len(value) * ATTRIBUTE_SIZE
    return len(value)
