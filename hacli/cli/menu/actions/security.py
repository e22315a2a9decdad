"""SECURITY FUNCTIONS: encrypt/decrypt files, sign, verify, hash, generate keys."""

from __future__ import annotations

from pkcs11 import KeyType, ObjectClass

from hacli.cli.menu.actions import mechs
from hacli.cli.menu.actions.common import (
    Ctx,
    action,
    choose_object,
    choose_session,
    hexdump,
    read_data,
    write_output,
)
from hacli.cli.menu.prompts import BadAnswer
from hacli.engine.ckr import CKR

ENCRYPTING = (ObjectClass.SECRET_KEY, ObjectClass.PUBLIC_KEY)
DECRYPTING = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)


def _cipher(ctx: Ctx, encrypt: bool) -> None:
    session = choose_session(ctx)
    key = choose_object(ctx, session, "Enter key handle", ENCRYPTING if encrypt else DECRYPTING)
    mech = mechs.choose_mechanism(ctx, session, mechs.ENCRYPT, mechs.key_type_of(session, key))
    source = ctx.io.ask_file("Input file")
    data = source.read_bytes()
    if encrypt:
        iv = session.generate_random(16) if mech.iv else None
        plain = mechs.pad(data) if mech.pad else data
        out = session.encrypt(key, plain, mech.mechanism, iv if iv else mech.param)
        result = (iv or b"") + out
        default = f"{source}.enc"
    else:
        iv, body = (data[:16], data[16:]) if mech.iv else (None, data)
        plain = session.decrypt(key, body, mech.mechanism, iv if iv else mech.param)
        result = mechs.unpad(plain) if mech.pad else plain
        default = str(source)[:-4] + ".dec" if str(source).endswith(".enc") else f"{source}.dec"
    write_output(ctx, result, "Output file", default)


@action(40)
def encrypt_file(ctx: Ctx) -> None:
    _cipher(ctx, encrypt=True)


@action(41)
def decrypt_file(ctx: Ctx) -> None:
    _cipher(ctx, encrypt=False)


@action(42)
def sign(ctx: Ctx) -> None:
    session = choose_session(ctx)
    key = choose_object(ctx, session, "Enter signing key handle",
                        (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY))
    mech = mechs.choose_mechanism(ctx, session, mechs.SIGN, mechs.key_type_of(session, key))
    data = read_data(ctx, "data to sign")
    signature = session.sign(key, mech.data(data), mech.mechanism, mech.param)
    ctx.state.last_signature = signature
    ctx.say(f"Signature ({len(signature)} bytes): {hexdump(signature)}")
    path = ctx.io.ask_optional_file("Write the signature to a file (empty: keep it for 43 Verify)",
                                    output=True)
    if path is not None:
        path.write_bytes(signature)
        ctx.say(f"Wrote {len(signature)} bytes to {path}")


def _signature(ctx: Ctx) -> bytes:
    last = ctx.state.last_signature

    def parse(text: str) -> bytes:
        if text:
            from hacli.cli.menu.prompts import existing_file

            return existing_file(text).read_bytes()
        if last is None:
            raise BadAnswer("No signature was made yet; enter a signature file.")
        return last

    return ctx.io.ask("Signature file (empty: the last signature made)", parse, "")


@action(43)
def verify(ctx: Ctx) -> str | None:
    session = choose_session(ctx)
    key = choose_object(ctx, session, "Enter verifying key handle",
                        (ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY))
    mech = mechs.choose_mechanism(ctx, session, mechs.SIGN, mechs.key_type_of(session, key))
    data = read_data(ctx, "signed data")
    signature = _signature(ctx)
    if session.verify(key, mech.data(data), signature, mech.mechanism, mech.param):
        ctx.say("Signature verified: it is valid.")
        return None
    ctx.say("The signature is NOT valid for this data and key.")
    return CKR.SIGNATURE_INVALID


@action(44)
def hash_file(ctx: Ctx) -> None:
    session = choose_session(ctx)
    mech = mechs.choose_mechanism(ctx, session, mechs.DIGEST)
    data = read_data(ctx, "data to hash")
    digest = session.digest(data, mech.mechanism)
    ctx.say(f"{mech.label} digest of {len(data)} bytes: {digest.hex()}")


@action(46)
def digest_key(ctx: Ctx) -> None:
    """C_DigestKey: the token digests a secret key's value, which never leaves it."""
    session = choose_session(ctx)
    key = choose_object(ctx, session, "Enter secret key handle", (ObjectClass.SECRET_KEY,))
    mech = mechs.choose_mechanism(ctx, session, mechs.DIGEST)
    digest = session.digest_key(key, mech.mechanism)
    ctx.say(f"{mech.label} digest of the value of key {key} (C_DigestKey): {digest.hex()}")


_CURVES = ("secp256r1", "secp384r1", "secp521r1")


@action(45)
def generate_key(ctx: Ctx) -> None:
    session = choose_session(ctx)
    kind = ctx.io.ask_choice("Key type:", ["AES", "RSA", "EC"], "Select a key type")
    label = ctx.io.ask_text("Key label", f"hacli-{['aes', 'rsa', 'ec'][kind]}")
    token = ctx.io.ask_yes_no("Store on the token", False)
    if kind == 0:
        bits = (128, 192, 256)[ctx.io.ask_choice("Key size:", ["128", "192", "256"],
                                                 "Select a key size", 3) ]
        handle = session.generate_key(KeyType.AES, bits, label=label, token=token)
        ctx.say(f"AES-{bits} key generated. Key handle: {handle}")
        return
    if kind == 1:
        bits = ctx.io.ask_int("Modulus bits", 1024, 8192, 2048)
        pub, priv = session.generate_keypair(KeyType.RSA, bits, label=label, token=token)
    else:
        curve = _CURVES[ctx.io.ask_choice("Curve:", list(_CURVES), "Select a curve")]
        pub, priv = session.generate_keypair(KeyType.EC, curve=curve, label=label, token=token)
    ctx.say(f"Key pair generated. Public key handle: {pub}, private key handle: {priv}")

