"""Key generation: a specification (``rsa:2048``, ``ec:prime256v1``, ``aes:256``)
and the key (pair) it makes on a slot.

Through an HA slot the engine makes the key once and copies it to every
member; through a member slot it is made on that member only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pkcs11 import Attribute, KeyType

from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.engine.session import VirtualSession

#: Curve names (OpenSSL's and pkcs11-tool's among them) -> the name python-pkcs11 encodes.
CURVES = {
    "prime256v1": "secp256r1", "secp256r1": "secp256r1", "p-256": "secp256r1",
    "secp384r1": "secp384r1", "p-384": "secp384r1",
    "secp521r1": "secp521r1", "p-521": "secp521r1",
}
RSA_BITS = (1024, 8192)
AES_BITS = (128, 192, 256)
#: the spellings ``--type`` takes, for help and errors
TYPES_HELP = "rsa:BITS (1024..8192), ec:CURVE (prime256v1, secp384r1, secp521r1), aes:128|192|256"


@dataclass(frozen=True)
class KeySpec:
    """What to generate: an RSA or EC key pair, or an AES key."""

    key_type: KeyType
    bits: int | None = None
    curve: str | None = None

    @property
    def text(self) -> str:
        """``rsa:2048``, ``ec:secp256r1``, ``aes:256``."""
        return f"{self.key_type.name.lower()}:{self.curve or self.bits}"

    @property
    def pair(self) -> bool:
        return self.key_type != KeyType.AES

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        """``--type`` of ``hacli keygen``; UsageError for anything else."""
        kind, _, size = text.strip().lower().partition(":")
        try:
            if kind == "ec" and size in CURVES:
                return cls(KeyType.EC, curve=CURVES[size])
            if kind == "rsa" and RSA_BITS[0] <= int(size) <= RSA_BITS[1]:
                return cls(KeyType.RSA, int(size))
            if kind == "aes":
                # pkcs11-tool counts secret keys in bytes (AES:32): both are taken
                bits = int(size) * (8 if int(size) in (16, 24, 32) else 1)
                if bits in AES_BITS:
                    return cls(KeyType.AES, bits)
        except ValueError:
            pass
        raise UsageError(f"{text!r} is not a key type; one of: {TYPES_HELP}")


@dataclass(frozen=True)
class NewKey:
    """Handles of what was generated (``public``/``private`` or ``secret``) and its CKA_ID."""

    id: bytes
    public: int | None = None
    private: int | None = None
    secret: int | None = None


def generate(session: VirtualSession, spec: KeySpec, label: str, *, key_id: bytes | None = None,
             token: bool = True) -> NewKey:
    """Generate ``spec`` on the session's slot, labelled ``label``.

    ``key_id`` is the CKA_ID of the key (both halves of a pair); by default
    the engine gives a random one.
    """
    if not spec.pair:
        secret = session.generate_key(spec.key_type, spec.bits, label=label, id=key_id,
                                      token=token)
        return NewKey(_id(session, secret), secret=secret)
    public, private = session.generate_keypair(spec.key_type, spec.bits, curve=spec.curve,
                                               label=label, id=key_id, token=token)
    return NewKey(_id(session, private), public=public, private=private)


def _id(session: VirtualSession, handle: int) -> bytes:
    return bytes(session.get_attribute(handle, Attribute.ID))


__all__ = ["AES_BITS", "CURVES", "RSA_BITS", "TYPES_HELP", "KeySpec", "NewKey", "generate"]
