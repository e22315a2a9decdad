"""KEY FUNCTIONS: wrap, unwrap, random numbers, ECDH derivation, known keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pkcs11 import KDF, Attribute, KeyType, Mechanism, ObjectClass

from hacli.cli.menu.actions import mechs
from hacli.cli.menu.actions.common import (
    Ctx,
    MenuError,
    action,
    choose_object,
    choose_session,
    hexdump,
    write_output,
)
from hacli.engine import CKRError
from hacli.engine.ckr import CKR


@action(60)
def wrap_key(ctx: Ctx) -> None:
    session = choose_session(ctx)
    wrapping = choose_object(ctx, session, "Enter wrapping key handle",
                             (ObjectClass.SECRET_KEY, ObjectClass.PUBLIC_KEY))
    key = choose_object(ctx, session, "Enter handle of the key to wrap",
                        (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY))
    mech = mechs.choose_mechanism(ctx, session, mechs.WRAP, mechs.key_type_of(session, wrapping))
    try:
        blob = session.wrap_key(wrapping, key, mech.mechanism, mech.param)
    except CKRError as e:
        if e.ckr == CKR.KEY_NOT_WRAPPABLE:
            ctx.say("Keys made through an HA group carry CKA_WRAP_WITH_TRUSTED: only a trusted "
                    "wrapping key (CKA_TRUSTED, set by the SO, such as the group's "
                    "hacli-transport key) can wrap them.")
        raise
    ctx.say(f"Wrapped key ({len(blob)} bytes): {hexdump(blob)}")
    write_output(ctx, blob, "Write the wrapped key to file", "wrapped.key")


#: What 61 Unwrap can make of a wrapped key: (text, class, key type).
_UNWRAPPED = (
    ("AES secret key", ObjectClass.SECRET_KEY, KeyType.AES),
    ("generic secret key", ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET),
    ("RSA private key", ObjectClass.PRIVATE_KEY, KeyType.RSA),
    ("EC private key", ObjectClass.PRIVATE_KEY, KeyType.EC),
)


@action(61)
def unwrap_key(ctx: Ctx) -> None:
    session = choose_session(ctx)
    unwrapping = choose_object(ctx, session, "Enter unwrapping key handle",
                               (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY))
    mech = mechs.choose_mechanism(ctx, session, mechs.WRAP,
                                  mechs.key_type_of(session, unwrapping))
    blob = ctx.io.ask_file("File with the wrapped key", "wrapped.key").read_bytes()
    index = ctx.io.ask_choice("The wrapped key is a:", [u[0] for u in _UNWRAPPED], "Select")
    _text, cls, key_type = _UNWRAPPED[index]
    label = ctx.io.ask_text("Label of the unwrapped key", "hacli-unwrapped")
    handle = session.unwrap_key(unwrapping, blob, cls, key_type, label=label,
                                mechanism=mech.mechanism, mechanism_param=mech.param)
    ctx.say(f"Key unwrapped. Key handle: {handle}")


@action(62)
def generate_random(ctx: Ctx) -> None:
    session = choose_session(ctx)
    n = ctx.io.ask_int("Number of random bytes", 1, 4096, 32)
    data = session.generate_random(n)
    ctx.say(f"Random ({n} bytes): {data.hex()}")


def _ec_point(session: Any, handle: int) -> bytes:
    """The peer's public point, as raw bytes (SoftHSM2 and the spec's ECDH input)."""
    der = session.get_attribute(handle, Attribute.EC_POINT)
    # DER OCTET STRING: 0x04, length (short or long form), then the point
    if len(der) > 2 and der[0] == 0x04:
        n = der[1]
        start = 2 + (n & 0x7F if n & 0x80 else 0)
        if len(der) - start in (65, 97, 133):
            return bytes(der[start:])
    return bytes(der)


@action(63)
def derive_key(ctx: Ctx) -> None:
    session = choose_session(ctx)
    if Mechanism.ECDH1_DERIVE not in session.mechanisms():
        raise MenuError("The slot does not list CKM_ECDH1_DERIVE.",
                        CKR.MECHANISM_INVALID)
    base = choose_object(ctx, session, "Enter your EC private key handle",
                         (ObjectClass.PRIVATE_KEY,))
    if mechs.key_type_of(session, base) != KeyType.EC:
        raise MenuError("ECDH needs an EC private key.", CKR.KEY_TYPE_INCONSISTENT)
    peer = choose_object(ctx, session, "Enter the other party's EC public key handle",
                         (ObjectClass.PUBLIC_KEY,))
    point = _ec_point(session, peer)
    bits = (128, 192, 256)[ctx.io.ask_choice("Derived AES key size:", ["128", "192", "256"],
                                             "Select a key size", 3)]
    label = ctx.io.ask_text("Label of the derived key", "hacli-ecdh")
    handle = session.derive_key(base, KeyType.AES, bits, mechanism=Mechanism.ECDH1_DERIVE,
                                mechanism_param=(KDF.NULL, None, point), label=label)
    ctx.say(f"CKM_ECDH1_DERIVE: AES-{bits} key derived. Key handle: {handle}")


@dataclass(frozen=True)
class KnownKey:
    """A fixed test key and its published known answer."""

    label: str
    key_type: KeyType
    value: bytes
    mechanism: Mechanism
    data: bytes
    answer: str
    source: str


KNOWN_KEYS = (
    KnownKey("known-aes128", KeyType.AES, bytes(range(16)), Mechanism.AES_ECB,
             bytes.fromhex("00112233445566778899aabbccddeeff"),
             "69c4e0d86a7b0430d8cdb78070b4c55a", "FIPS-197 C.1"),
    KnownKey("known-aes256", KeyType.AES, bytes(range(32)), Mechanism.AES_ECB,
             bytes.fromhex("00112233445566778899aabbccddeeff"),
             "8ea2b7ca516745bfeafc49904b496089", "FIPS-197 C.3"),
    # SoftHSM2 wants HMAC keys of 32 bytes or more, and its CKM_AES_KEY_WRAP_PAD
    # unwrap keeps the padding of a key whose length is not a multiple of 8
    # (a replica would differ), so not RFC 4231's 131-byte key.
    KnownKey("known-hmac", KeyType.GENERIC_SECRET, bytes(range(32)), Mechanism.SHA256_HMAC,
             b"Sample message for keylen<blocklen",
             "a28cf43130ee696a98f14a37678b56bcfcbdd9e5cf69717fecf5480f0ebdf790",
             "NIST HMAC-SHA256 example, keylen<blocklen"),
)


def create_known(session: Any, known: KnownKey, token: bool = False) -> int:
    """Create ``known`` as a (public, non-sensitive: it is a published test key) object."""
    use = known.mechanism == Mechanism.SHA256_HMAC
    template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: known.key_type,
                Attribute.VALUE: known.value, Attribute.LABEL: known.label,
                Attribute.TOKEN: token, Attribute.PRIVATE: False, Attribute.SENSITIVE: False,
                Attribute.ENCRYPT: not use, Attribute.DECRYPT: not use,
                Attribute.SIGN: use, Attribute.VERIFY: use}
    return session.create_object(template)


@action(65)
def create_known_keys(ctx: Ctx) -> None:
    session = choose_session(ctx)
    for known in KNOWN_KEYS:
        handle = create_known(session, known)
        name = getattr(known.mechanism, "name", "")
        ctx.say(f"Key handle {handle}: {known.label} ({known.source}); CKM_{name} of "
                f"{known.data.hex()} gives {known.answer}")
