"""The operations multitoken can load a slot with, and how each answer is checked.

RSA PKCS#1 v1.5 signatures and AES with a fixed IV are deterministic, so
every answer is compared with the one known-good answer computed (and checked
by a round trip) before the run.  ECDSA signatures are randomised: a sample of
them is verified through the slot after the timed run.  Random output is
checked for length and for not repeating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pkcs11 import KeyType, Mechanism, ObjectClass

from hacli.errors import HacliError

#: Label prefix of the test keys (created once per slot, then reused).
KEY_LABEL = "hacli-multitoken"
#: The label of each mode's key (``random`` needs none).
KEY_LABELS = {
    "rsasign": f"{KEY_LABEL}-rsa2048",
    "ecsign": f"{KEY_LABEL}-p256",
    "aesenc": f"{KEY_LABEL}-aes256",
}
DATA = b"hacli multitoken: the quick brown fox jumps over the lazy dog"
BLOCK = bytes(range(256)) * 16  # 4 KiB
IV = bytes(16)
RANDOM_BYTES = 256
EC_SAMPLE = 200


class WrongAnswer(Exception):
    """A call succeeded but returned something other than the right answer."""


class ModeUnavailable(HacliError):
    """The slot cannot run this mode as specified (exit 1, one line)."""


@dataclass
class Prepared:
    """A mode ready to run: ``op(ops)`` does one operation and checks it."""

    op: Callable[[Any], None]
    #: Checks run after the timed part (None: none); returns the number of wrong answers.
    after: Callable[[Any], int] | None = None
    notes: list[str] = field(default_factory=list)


def _keypair(target: Any, ops: Any, key_type: KeyType, label: str, **kw: Any) -> tuple[Any, Any]:
    priv = target.find_key(label, ObjectClass.PRIVATE_KEY)
    pub = target.find_key(label, ObjectClass.PUBLIC_KEY) if priv is not None else None
    if priv is None or pub is None:
        # half a pair, or copies on some members only: made again, whole
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            target.discard(label, cls)
        pub, priv = target.generate_keypair(key_type, label, **kw)
    return pub, priv


def rsasign(target: Any, ops: Any) -> Prepared:
    pub, priv = _keypair(target, ops, KeyType.RSA, KEY_LABELS["rsasign"], bits=2048)
    mech = Mechanism.SHA256_RSA_PKCS
    expected = ops.sign(priv, DATA, mech)
    if not ops.verify(pub, DATA, expected, mech):
        raise WrongAnswer("the reference RSA signature does not verify")

    def op(o: Any) -> None:
        if o.sign(priv, DATA, mech) != expected:
            raise WrongAnswer("RSA signature differs from the reference")

    return Prepared(op)


def ecsign(target: Any, ops: Any) -> Prepared:
    pub, priv = _keypair(target, ops, KeyType.EC, KEY_LABELS["ecsign"], curve="secp256r1")
    notes = [f"verified a sample of up to {EC_SAMPLE} ECDSA signatures"]
    if Mechanism.ECDSA_SHA256 in target.mechanisms():
        mech, data = Mechanism.ECDSA_SHA256, DATA
    else:
        # p11-kit 0.24's RPC forwards CKM_ECDSA but not CKM_ECDSA_SHA256: hash here,
        # which is the same signature scheme.
        mech, data = Mechanism.ECDSA, hashlib.sha256(DATA).digest()
        notes.append("CKM_ECDSA over a SHA-256 digest made on the host")
    made: list[bytes] = []

    def op(o: Any) -> None:
        sig = o.sign(priv, data, mech)
        if len(made) < EC_SAMPLE:
            made.append(sig)

    def after(o: Any) -> int:
        return sum(not o.verify(pub, data, sig, mech) for sig in made)

    return Prepared(op, after, notes)


def aesenc(target: Any, ops: Any) -> Prepared:
    label = KEY_LABELS["aesenc"]
    key = target.find_key(label, ObjectClass.SECRET_KEY)
    if key is None:
        target.discard(label, ObjectClass.SECRET_KEY)  # copies on some members only
        key = target.generate_key(KeyType.AES, 256, label)
    mech, iv = Mechanism.AES_CBC, IV
    if mech not in target.mechanisms():
        # no silent switch to another mode: a load figure must say what it measured
        raise ModeUnavailable("the slot does not offer CKM_AES_CBC (a p11-kit RPC older than "
                          "0.25 cannot carry its IV; see docs/lab.md)")
    expected = ops.encrypt(key, BLOCK, mech, iv)
    if ops.decrypt(key, expected, mech, iv) != BLOCK:
        raise WrongAnswer("the reference AES block does not decrypt")

    def op(o: Any) -> None:
        if o.encrypt(key, BLOCK, mech, iv) != expected:
            raise WrongAnswer("AES ciphertext differs from the reference")

    return Prepared(op)


def random(target: Any, ops: Any) -> Prepared:
    last: dict[int, bytes] = {}

    def op(o: Any) -> None:
        out = o.random(RANDOM_BYTES)
        me = id(o)
        if len(out) != RANDOM_BYTES or last.get(me) == out:
            raise WrongAnswer("random output of the wrong length, or repeated")
        last[me] = out

    return Prepared(op)


MODES: dict[str, Callable[[Any, Any], Prepared]] = {
    "rsasign": rsasign,
    "ecsign": ecsign,
    "aesenc": aesenc,
    "random": random,
}

__all__ = ["KEY_LABEL", "KEY_LABELS", "MODES", "ModeUnavailable", "Prepared", "WrongAnswer"]
