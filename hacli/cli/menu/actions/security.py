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
    write_file,
    write_output,
)
from hacli.cli.menu.prompts import BadAnswer
from hacli.engine.ckr import CKR
from hacli.tokenops import crypto
from hacli.tokenops.keys import KeySpec, generate
from hacli.tokenops.objects import KEY_CLASSES


def _cipher(ctx: Ctx, encrypt: bool) -> None:
    session = choose_session(ctx)
    key = choose_object(ctx, session, "Enter key handle",
                        KEY_CLASSES["encrypt" if encrypt else "decrypt"])
    mech = mechs.choose_mechanism(ctx, session, mechs.ENCRYPT, mechs.key_type_of(session, key))
    source = ctx.io.ask_file("Input file")
    data = source.read_bytes()
    # the menu's files carry a random IV in front of the ciphertext
    if encrypt:
        iv = session.generate_random(crypto.IV_BYTES) if mech.iv else None
        result = (iv or b"") + crypto.encrypt(session, key, mech, data, iv)
        default = f"{source}.enc"
    else:
        iv, body = (data[:crypto.IV_BYTES], data[crypto.IV_BYTES:]) if mech.iv else (None, data)
        result = crypto.decrypt(session, key, mech, body, iv)
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
    key = choose_object(ctx, session, "Enter signing key handle", KEY_CLASSES["sign"])
    mech = mechs.choose_mechanism(ctx, session, mechs.SIGN, mechs.key_type_of(session, key))
    data = read_data(ctx, "data to sign")
    signature = crypto.sign(session, key, mech, data)
    ctx.state.last_signature = signature
    ctx.say(f"Signature ({len(signature)} bytes): {hexdump(signature)}")
    path = ctx.io.ask_optional_file("Write the signature to a file (empty: keep it for 43 Verify)",
                                    output=True)
    if path is not None:
        write_file(ctx, path, signature)


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
    key = choose_object(ctx, session, "Enter verifying key handle", KEY_CLASSES["verify"])
    mech = mechs.choose_mechanism(ctx, session, mechs.SIGN, mechs.key_type_of(session, key))
    data = read_data(ctx, "signed data")
    signature = _signature(ctx)
    if crypto.verify(session, key, mech, data, signature):
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
        made = generate(session, KeySpec(KeyType.AES, bits), label, token=token)
        ctx.say(f"AES-{bits} key generated. Key handle: {made.secret}")
        return
    if kind == 1:
        spec = KeySpec(KeyType.RSA, ctx.io.ask_int("Modulus bits", 1024, 8192, 2048))
    else:
        spec = KeySpec(KeyType.EC, curve=_CURVES[ctx.io.ask_choice("Curve:", list(_CURVES),
                                                                   "Select a curve")])
    made = generate(session, spec, label, token=token)
    ctx.say(f"Key pair generated. Public key handle: {made.public}, private key handle: "
            f"{made.private}")

