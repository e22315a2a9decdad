"""hacli serve's wire layer: framing, version negotiation and the message codec
(p11-kit's rpc-message.c formats), without a token."""

from __future__ import annotations

import random
import socket
import struct

import pytest

from hacli.engine.ckr import CKR
from hacli.serve.codec import (
    CALL_IDS,
    CALLS,
    Attr,
    AttrRequest,
    Mechanism,
    Reader,
    ValueType,
    Writer,
    native_length,
    value_type,
)
from hacli.serve.wire import ProtocolError, encode_frame, negotiate, read_frame

U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")


def header(name: str, request: bool = True) -> bytes:
    cid = CALL_IDS[name]
    sig = CALLS[cid][1 if request else 2].encode()
    return U32.pack(cid) + U32.pack(len(sig)) + sig


def test_call_table_matches_p11kit_ids() -> None:
    # spot checks against p11-kit's enum: the ids are the protocol
    assert CALL_IDS["C_Initialize"] == 1
    assert CALL_IDS["C_GetAttributeValue"] == 24
    assert CALL_IDS["C_SignInit"] == 42
    assert CALL_IDS["C_Sign"] == 43
    assert CALL_IDS["C_GenerateRandom"] == 64
    assert CALL_IDS["C_WaitForSlotEvent"] == 65
    assert CALL_IDS["C_InitToken2"] == 88


@pytest.mark.parametrize(("client", "agreed"), [(0, 0), (1, 1), (7, 1)])
def test_version_negotiation(client: int, agreed: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(bytes([client]))
        assert negotiate(b) == agreed
        assert a.recv(1) == bytes([agreed])


def test_frames_round_trip_and_skip_options() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(encode_frame(9, b"body", options=b"p11-kit-client"))
        assert read_frame(b) == (9, b"body")
        a.close()
        assert read_frame(b) is None


@pytest.mark.parametrize("frame", [
    U32.pack(0) + U32.pack(0) + U32.pack(0),                  # call code 0
    U32.pack(1) + U32.pack(0) + U32.pack(10) + b"short",      # body cut off
    U32.pack(1) + U32.pack(0),                                # header cut off
    U32.pack(1) + U32.pack(0) + U32.pack(0x7FFFFFFF),         # absurd length
])
def test_bad_frames_are_protocol_errors(frame: bytes) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(frame)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError):
            read_frame(b)


def test_reader_scalars_buffers_and_arrays() -> None:
    body = (header("C_Initialize")
            + b"\x01" + U32.pack(3) + b"abc"   # ay: valid, 3 bytes
            + b"\x00"                          # y
            + b"\x00" + U32.pack(0))           # ay: not valid (length only)
    r = Reader(body)
    assert r.byte_array() == b"abc"
    assert r.byte() == 0
    assert r.byte_array() is None
    r.done()
    for room, expected in ((0, None), (0xFFFFFFFF, 0), (256, 256)):
        r = Reader(header("C_GenerateRandom") + U64.pack(5) + U32.pack(room))
        assert r.ulong() == 5
        assert r.byte_buffer() == expected
        r.done()


def test_reader_refuses_out_of_order_parts_truncation_and_leftovers() -> None:
    body = header("C_GenerateRandom") + U64.pack(5) + U32.pack(16)
    with pytest.raises(ProtocolError):
        Reader(body).byte()                     # the signature says u first
    r = Reader(body[:-2])
    r.ulong()
    with pytest.raises(ProtocolError):
        r.byte_buffer()                         # truncated
    r = Reader(body + b"x")
    r.ulong()
    r.byte_buffer()
    with pytest.raises(ProtocolError):
        r.done()                                # a byte left over
    bad_sig = U32.pack(CALL_IDS["C_GenerateRandom"]) + U32.pack(2) + b"uu"
    with pytest.raises(ProtocolError):
        Reader(bad_sig)
    with pytest.raises(ProtocolError):
        Reader(U32.pack(len(CALLS)) + U32.pack(0))  # no such call


def test_attribute_values_by_type() -> None:
    assert value_type(0x000) is ValueType.ULONG        # CKA_CLASS
    assert value_type(0x001) is ValueType.BYTE         # CKA_TOKEN
    assert value_type(0x003) is ValueType.BYTE_ARRAY   # CKA_LABEL
    assert value_type(0x110) is ValueType.DATE
    assert value_type(0x40000211) is ValueType.ATTRIBUTE_ARRAY
    assert value_type(0x40000600) is ValueType.MECHANISM_TYPE_ARRAY
    w = Writer(CALL_IDS["C_CreateObject"], request=True)
    w.ulong(1)
    w.attribute_array([
        (0x000, struct.pack("<Q", 4), 8),                 # CKA_CLASS = CKO_SECRET_KEY
        (0x001, b"\x01", 1),                              # CKA_TOKEN = TRUE
        (0x003, b"label", 5),
        (0x110, b"20261203", 8),
        (0x40000600, struct.pack("<QQ", 0x1, 0x40), 16),
        (0x40000211, [Attr(0x104, b"\x01")], 24),
        (0x011, None, -1),                                # unavailable
    ])
    r = Reader(w.finish())
    assert r.ulong() == 1
    attrs = r.attribute_array()
    r.done()
    assert attrs == [
        Attr(0x000, struct.pack("<Q", 4)), Attr(0x001, b"\x01"), Attr(0x003, b"label"),
        Attr(0x110, b"20261203"), Attr(0x40000600, struct.pack("<QQ", 0x1, 0x40)),
        Attr(0x40000211, [Attr(0x104, b"\x01")]), Attr(0x011, None),
    ]
    assert [native_length(a.value) for a in attrs] == [8, 1, 5, 8, 16, 24, -1]


def test_attribute_buffer_nesting_depends_on_version() -> None:
    nested = (U32.pack(1) + U32.pack(0x40000211) + U32.pack(48)   # a template with room
              + U32.pack(1) + U32.pack(0x104) + U32.pack(1))      # its own buffer (v1)
    r = Reader(header("C_GetAttributeValue") + U64.pack(1) + U64.pack(2) + nested, version=1)
    r.ulong()
    r.ulong()
    assert r.attribute_buffer() == [AttrRequest(0x40000211, 48)]
    r.done()
    r = Reader(header("C_GetAttributeValue") + U64.pack(1) + U64.pack(2) + nested, version=0)
    r.ulong()
    r.ulong()
    r.attribute_buffer()
    with pytest.raises(ProtocolError):
        r.done()  # protocol 0 has no nesting: the nested buffer is garbage


def test_mechanisms_with_and_without_parameters() -> None:
    def read(mech_bytes: bytes) -> Mechanism | None:
        r = Reader(header("C_SignInit") + U64.pack(1) + mech_bytes + U64.pack(7))
        r.ulong()
        m = r.mechanism()
        assert r.ulong() == 7
        r.done()
        return m

    assert read(U32.pack(0x40) + U32.pack(0xFFFFFFFF)) == Mechanism(0x40, None)  # SHA256_RSA
    assert read(U32.pack(0xFFFFFFFF)) is None                                     # NULL: cancel
    pss = U32.pack(0x43) + U64.pack(0x250) + U64.pack(2) + U64.pack(32)
    assert read(pss) == Mechanism(0x43, (0x250, 2, 32))
    oaep = U32.pack(0x09) + U64.pack(0x250) + U64.pack(2) + U64.pack(1) + U32.pack(3) + b"abc"
    assert read(oaep) == Mechanism(0x09, (0x250, 2, 1, b"abc"))
    iv = bytes(range(16))
    assert read(U32.pack(0x1082) + U32.pack(16) + iv) == Mechanism(0x1082, iv)    # AES_CBC
    with pytest.raises(ProtocolError):
        read(U32.pack(0x1082) + U32.pack(8) + iv[:8])                             # bad IV


def test_writer_length_answers_and_errors() -> None:
    w = Writer(CALL_IDS["C_Sign"])
    w.byte_array(None, 256)   # a length answer: not valid, the length
    assert w.finish()[-5:] == b"\x00" + U32.pack(256)
    w = Writer(CALL_IDS["C_Sign"])
    w.byte_array(None, 0)     # nothing to answer: valid and NULL, as p11-kit writes it
    assert w.finish()[-5:] == b"\x01" + U32.pack(0xFFFFFFFF)
    w = Writer(CALL_IDS["C_GetSlotList"])
    w.ulong_array(None, 3)
    assert w.finish()[-5:] == b"\x00" + U32.pack(3)
    err = Writer.error(CKR.BUFFER_TOO_SMALL.rv)
    assert err == U32.pack(0) + U32.pack(1) + b"u" + U64.pack(0x150)  # the number on the wire
    w = Writer(CALL_IDS["C_GetSlotInfo"])
    w.space_string("HA", 64)
    assert w.buf[-64:] == b"HA".ljust(64)


def test_random_and_truncated_bodies_never_escape_as_other_errors() -> None:
    """Garbage is a ProtocolError (the connection is dropped), never another exception."""
    rng = random.Random(1103)
    valid = []
    w = Writer(CALL_IDS["C_FindObjectsInit"], request=True)
    w.ulong(1)
    w.attribute_array([(0x003, b"k", 1), (0x000, struct.pack("<Q", 3), 8)])
    valid.append(w.finish())
    w = Writer(CALL_IDS["C_SignInit"], request=True)
    w.ulong(1)
    w.mechanism(Mechanism(0x40, None))
    w.ulong(2)
    valid.append(w.finish())
    for _ in range(400):
        base = rng.choice(valid)
        kind = rng.randrange(3)
        if kind == 0:
            body = base[:rng.randrange(len(base))]
        elif kind == 1:
            body = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            body = bytes(body)
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        try:
            r = Reader(body)
            for part in ("u", "aA") if r.name == "C_FindObjectsInit" else ():
                r.ulong() if part == "u" else r.attribute_array()
            r.done()
        except ProtocolError:
            pass
