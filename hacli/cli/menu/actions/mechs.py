"""The mechanisms the menu offers, per operation and key type.

Only mechanisms the slot lists are offered.  Where a token lacks a mechanism
(SoftHSM2 has no ``CKM_ECDSA_SHA256``; p11-kit's RPC before 0.25 carries no
``CKM_AES_CBC_PAD``), hacli does the missing step itself and says so: it
hashes for ``CKM_ECDSA`` and pads for ``CKM_AES_ECB``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pkcs11 import MGF, Attribute, KeyType, Mechanism

from hacli.cli.menu.actions.common import Ctx, MenuError
from hacli.engine.ckr import CKR

if TYPE_CHECKING:
    from hacli.engine import VirtualSession


@dataclass(frozen=True)
class Mech:
    """A menu mechanism: what the token does, and what hacli adds."""

    label: str
    mechanism: Mechanism
    key_types: tuple[KeyType, ...]
    param: Any = None
    #: hash the data with SHA-256 in hacli and hand the digest to the token
    prehash: bool = False
    #: PKCS#7 padding done by hacli (for a mechanism without padding)
    pad: bool = False
    #: a random IV, written in front of the ciphertext
    iv: bool = False

    def data(self, data: bytes) -> bytes:
        return hashlib.sha256(data).digest() if self.prehash else data


SIGN = (
    Mech("CKM_SHA256_RSA_PKCS", Mechanism.SHA256_RSA_PKCS, (KeyType.RSA,)),
    Mech("CKM_RSA_PKCS_PSS (SHA-256 of the data, MGF1-SHA-256)", Mechanism.RSA_PKCS_PSS,
         (KeyType.RSA,), param=(Mechanism.SHA256, MGF.SHA256, 32), prehash=True),
    Mech("CKM_ECDSA (SHA-256 of the data)", Mechanism.ECDSA, (KeyType.EC,), prehash=True),
    Mech("CKM_SHA256_HMAC", Mechanism.SHA256_HMAC, (KeyType.GENERIC_SECRET,)),
    Mech("CKM_AES_CMAC", Mechanism.AES_CMAC, (KeyType.AES,)),
)

ENCRYPT = (
    Mech("CKM_AES_CBC_PAD (random IV at the start of the file)", Mechanism.AES_CBC_PAD,
         (KeyType.AES,), iv=True),
    Mech("CKM_AES_ECB (PKCS#7 padding by hacli)", Mechanism.AES_ECB, (KeyType.AES,), pad=True),
    Mech("CKM_RSA_PKCS_OAEP (SHA-1)", Mechanism.RSA_PKCS_OAEP, (KeyType.RSA,)),
    Mech("CKM_RSA_PKCS", Mechanism.RSA_PKCS, (KeyType.RSA,)),
)

WRAP = (
    Mech("CKM_AES_KEY_WRAP_PAD", Mechanism.AES_KEY_WRAP_PAD, (KeyType.AES,)),
    Mech("CKM_AES_KEY_WRAP", Mechanism.AES_KEY_WRAP, (KeyType.AES,)),
    Mech("CKM_RSA_PKCS_OAEP (SHA-1)", Mechanism.RSA_PKCS_OAEP, (KeyType.RSA,)),
    Mech("CKM_RSA_PKCS", Mechanism.RSA_PKCS, (KeyType.RSA,)),
)

DIGEST = (
    Mech("CKM_SHA256", Mechanism.SHA256, ()),
    Mech("CKM_SHA_1", Mechanism.SHA_1, ()),
    Mech("CKM_SHA384", Mechanism.SHA384, ()),
    Mech("CKM_SHA512", Mechanism.SHA512, ()),
)


def key_type_of(session: VirtualSession, handle: int) -> KeyType:
    return session.get_attribute(handle, Attribute.KEY_TYPE)


def choose_mechanism(ctx: Ctx, session: VirtualSession, table: tuple[Mech, ...],
                     key_type: KeyType | None = None) -> Mech:
    """The mechanisms of ``table`` for ``key_type`` that the slot lists; one is chosen."""
    fitting = [m for m in table if key_type is None or key_type in m.key_types]
    if not fitting:
        name = getattr(key_type, "name", key_type)
        raise MenuError(f"No mechanism of this option takes a CKK_{name} key.",
                        CKR.KEY_TYPE_INCONSISTENT)
    listed = set(session.mechanisms())
    offered = [m for m in fitting if m.mechanism in listed]
    if not offered:
        raise MenuError("The slot lists none of: " + ", ".join(m.label for m in fitting),
                        CKR.MECHANISM_INVALID)
    index = ctx.io.ask_choice("Mechanisms:", [m.label for m in offered], "Select a mechanism")
    return offered[index]


def pad(data: bytes, block: int = 16) -> bytes:
    n = block - len(data) % block
    return data + bytes([n]) * n


def unpad(data: bytes, block: int = 16) -> bytes:
    n = data[-1] if data else 0
    if not 1 <= n <= block or data[-n:] != bytes([n]) * n:
        raise MenuError("The decrypted data has no valid PKCS#7 padding (wrong key or file?).",
                        CKR.ENCRYPTED_DATA_INVALID)
    return data[:-n]
