"""Sign, verify, encrypt and decrypt with an entry of the mechanism table.

What hacli adds to the token's mechanism (a digest before ``CKM_ECDSA``,
PKCS#7 padding around ``CKM_AES_ECB``, the IV as the parameter) happens here,
once, for the one-shot commands and the menu alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacli.errors import UsageError
from hacli.tokenops.mechanisms import Mech, pad, unpad

if TYPE_CHECKING:
    from hacli.engine.session import VirtualSession

#: The IV of the AES CBC mechanisms: one block.
IV_BYTES = 16


def check_iv(mech: Mech, iv: bytes | None) -> None:
    """UsageError unless an IV is given exactly when ``mech`` takes one, of one block."""
    if mech.iv and iv is None:
        raise UsageError(f"{mech.name} needs an IV: give --iv HEX ({IV_BYTES} bytes)")
    if not mech.iv and iv is not None:
        raise UsageError(f"{mech.name} takes no IV (--iv)")
    if iv is not None and len(iv) != IV_BYTES:
        raise UsageError(f"the IV of {mech.name} is {IV_BYTES} bytes, not {len(iv)}")


def sign(session: VirtualSession, key: int, mech: Mech, data: bytes) -> bytes:
    """The signature (or MAC) of ``data``."""
    return session.sign(key, mech.data(data), mech.mechanism, mech.param)


def verify(session: VirtualSession, key: int, mech: Mech, data: bytes,
           signature: bytes) -> bool:
    """True when ``signature`` is valid for ``data`` and the key."""
    return session.verify(key, mech.data(data), signature, mech.mechanism, mech.param)


def encrypt(session: VirtualSession, key: int, mech: Mech, data: bytes,
            iv: bytes | None = None) -> bytes:
    """The ciphertext of ``data`` (the IV, when the mechanism takes one, is not in it)."""
    check_iv(mech, iv)
    plain = pad(data) if mech.pad else data
    return session.encrypt(key, plain, mech.mechanism, iv if mech.iv else mech.param)


def decrypt(session: VirtualSession, key: int, mech: Mech, data: bytes,
            iv: bytes | None = None) -> bytes:
    """The plaintext of ``data``."""
    check_iv(mech, iv)
    plain = session.decrypt(key, data, mech.mechanism, iv if mech.iv else mech.param)
    return unpad(plain) if mech.pad else plain


__all__ = ["IV_BYTES", "check_iv", "decrypt", "encrypt", "sign", "verify"]
