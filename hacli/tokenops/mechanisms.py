"""The one table of mechanisms hacli signs, encrypts, wraps and digests with.

Each entry is named as pkcs11-tool names it (``SHA256-RSA-PKCS``,
``AES-CBC-PAD``, ``RSA-PKCS-OAEP``): ``--mechanism`` of the one-shot commands
takes these names, and the menu offers views of the same entries
(:data:`MENU_VIEWS`).  Where a token lacks a mechanism (SoftHSM2 has no
``CKM_ECDSA_SHA256``), the entry says what hacli does itself: it hashes the
data before ``CKM_ECDSA`` (``prehash``), or pads for ``CKM_AES_ECB`` (``pad``;
``AES-ECB-PAD`` is hacli's name for that, pkcs11-tool has none).  Signatures
and ciphertexts are those of the named mechanism, so any other tool checks them.

Also here: the names and flags of a slot's mechanism list (``hacli
mechanisms``, like ``pkcs11-tool -M``; the menu's options 8 and 9).
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pkcs11 import MGF, KeyType, Mechanism
from pkcs11.constants import MechanismFlag

from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.engine.session import VirtualSession


class Use(enum.StrEnum):
    """What an entry is for (a command, or a menu option's list)."""

    SIGN = "sign"  # sign and verify
    ENCRYPT = "encrypt"  # encrypt and decrypt
    WRAP = "wrap"  # wrap and unwrap
    DIGEST = "digest"


@dataclass(frozen=True)
class Mech:
    """A mechanism of the table: what the token does, and what hacli adds."""

    #: pkcs11-tool's name (hacli's for what pkcs11-tool lacks)
    name: str
    #: what the token is asked to do
    mechanism: Mechanism
    uses: tuple[Use, ...]
    key_types: tuple[KeyType, ...] = ()
    #: the mechanism parameter (None: python-pkcs11's default for it)
    param: Any = None
    #: hashlib name: hacli hashes the data, the token signs the digest
    prehash: str | None = None
    #: PKCS#7 padding done by hacli (for a mechanism without padding)
    pad: bool = False
    #: takes a 16-byte IV as its parameter
    iv: bool = False
    #: what hacli adds, in words (shown by the menu)
    note: str = ""

    @property
    def label(self) -> str:
        """``CKM_RSA_PKCS_PSS (SHA-256 of the data, MGF1-SHA-256)``: for lists."""
        return ckm_name(self.mechanism) + (f" ({self.note})" if self.note else "")

    def data(self, data: bytes) -> bytes:
        """What the token gets for ``data``: its digest when hacli hashes first."""
        return hashlib.new(self.prehash, data).digest() if self.prehash else data

    def fits(self, key_type: KeyType | None) -> bool:
        """True when this mechanism takes a key of ``key_type`` (None: any)."""
        return key_type is None or not self.key_types or key_type in self.key_types


_S, _E, _W, _D = Use.SIGN, Use.ENCRYPT, Use.WRAP, Use.DIGEST
_RSA, _EC, _AES, _SECRET = (KeyType.RSA,), (KeyType.EC,), (KeyType.AES,), \
    (KeyType.GENERIC_SECRET,)

#: (name in mechanism names, hashlib name, words, digest mechanism, MGF1)
_HASHES = (
    ("SHA1", "sha1", "SHA-1", Mechanism.SHA_1, MGF.SHA1),
    ("SHA256", "sha256", "SHA-256", Mechanism.SHA256, MGF.SHA256),
    ("SHA384", "sha384", "SHA-384", Mechanism.SHA384, MGF.SHA384),
    ("SHA512", "sha512", "SHA-512", Mechanism.SHA512, MGF.SHA512),
)


def _table() -> tuple[Mech, ...]:
    hashed: list[Mech] = []
    for h, lib, words, digest, mgf in _HASHES:
        size = hashlib.new(lib).digest_size
        hashed += [
            Mech(f"{h}-RSA-PKCS", Mechanism[f"{h}_RSA_PKCS"], (_S,), _RSA),
            # the hash in hacli and CKM_RSA_PKCS_PSS give the signature that
            # CKM_SHAx_RSA_PKCS_PSS gives (salt as long as the digest)
            Mech(f"{h}-RSA-PKCS-PSS", Mechanism.RSA_PKCS_PSS, (_S,), _RSA,
                 param=(digest, mgf, size), prehash=lib,
                 note=f"{words} of the data, MGF1-{words}"),
            Mech(f"ECDSA-{h}", Mechanism.ECDSA, (_S,), _EC, prehash=lib,
                 note=f"{words} of the data"),
        ]
        if h != "SHA1":
            hashed.append(Mech(f"{h}-HMAC", Mechanism[f"{h}_HMAC"], (_S,), _SECRET))
        hashed.append(Mech(tool_name(digest), digest, (_D,)))
    return (
        *hashed,
        Mech("ECDSA", Mechanism.ECDSA, (_S,), _EC),  # the data is the digest
        Mech("RSA-PKCS", Mechanism.RSA_PKCS, (_S, _E, _W), _RSA),
        Mech("RSA-PKCS-OAEP", Mechanism.RSA_PKCS_OAEP, (_E, _W), _RSA, note="SHA-1"),
        Mech("AES-CMAC", Mechanism.AES_CMAC, (_S,), _AES),
        Mech("AES-CBC-PAD", Mechanism.AES_CBC_PAD, (_E,), _AES, iv=True),
        Mech("AES-CBC", Mechanism.AES_CBC, (_E,), _AES, iv=True),
        Mech("AES-ECB", Mechanism.AES_ECB, (_E,), _AES),
        Mech("AES-ECB-PAD", Mechanism.AES_ECB, (_E,), _AES, pad=True,
             note="PKCS#7 padding by hacli"),
        Mech("AES-KEY-WRAP-PAD", Mechanism.AES_KEY_WRAP_PAD, (_W,), _AES),
        Mech("AES-KEY-WRAP", Mechanism.AES_KEY_WRAP, (_W,), _AES),
    )


# -- names ----------------------------------------------------------------------
#: pkcs11-tool's names that are not the CKM name with dashes
_TOOL_NAMES = {Mechanism.EC_KEY_PAIR_GEN: "ECDSA-KEY-PAIR-GEN"}


def _enum_name(mech: Any) -> str | None:
    name = getattr(mech, "name", None)
    return name if name and not name.startswith("_") else None


def ckm_name(mech: Any) -> str:
    """``CKM_SHA256_RSA_PKCS`` (``0x...`` for a mechanism python-pkcs11 does not name)."""
    name = _enum_name(mech)
    return f"CKM_{name}" if name else f"0x{int(mech):08X}"


def tool_name(mech: Any) -> str:
    """pkcs11-tool's name of a mechanism: ``SHA256-RSA-PKCS``, ``SHA-1``,
    ``mechtype-0x...`` for one it does not know."""
    if mech in _TOOL_NAMES:
        return _TOOL_NAMES[mech]
    name = _enum_name(mech)
    return name.replace("_", "-") if name else f"mechtype-0x{int(mech):X}"


TABLE: tuple[Mech, ...] = _table()
_BY_NAME = {m.name.upper(): m for m in TABLE}


def names(use: Use) -> list[str]:
    """The names ``--mechanism`` takes for ``use``."""
    return [m.name for m in TABLE if use in m.uses]


def find(name: str, use: Use) -> Mech:
    """The entry called ``name`` (case-insensitive) for ``use``; UsageError naming
    the choices when there is none."""
    mech = _BY_NAME.get(name.strip().upper())
    if mech is None or use not in mech.uses:
        what = "an unknown mechanism" if mech is None else f"not a mechanism to {use} with"
        raise UsageError(f"{name!r} is {what}; one of: {', '.join(names(use))}")
    return mech


def view(*wanted: str) -> tuple[Mech, ...]:
    """Entries by name, in the order given (the menu's lists)."""
    return tuple(_BY_NAME[n.upper()] for n in wanted)


#: What the menu offers in each of its options' mechanism lists.
MENU_VIEWS: dict[Use, tuple[Mech, ...]] = {
    Use.SIGN: view("SHA256-RSA-PKCS", "SHA256-RSA-PKCS-PSS", "ECDSA-SHA256", "SHA256-HMAC",
                   "AES-CMAC"),
    Use.ENCRYPT: view("AES-CBC-PAD", "AES-ECB-PAD", "RSA-PKCS-OAEP", "RSA-PKCS"),
    Use.WRAP: view("AES-KEY-WRAP-PAD", "AES-KEY-WRAP", "RSA-PKCS-OAEP", "RSA-PKCS"),
    Use.DIGEST: view("SHA256", "SHA-1", "SHA384", "SHA512"),
}


# -- padding ----------------------------------------------------------------------
def pad(data: bytes, block: int = 16) -> bytes:
    """PKCS#7 padding to a multiple of ``block``."""
    n = block - len(data) % block
    return data + bytes([n]) * n


def unpad(data: bytes, block: int = 16) -> bytes:
    """Remove PKCS#7 padding (``CKR_ENCRYPTED_DATA_INVALID`` when there is none)."""
    n = data[-1] if data else 0
    if not 1 <= n <= block or data[-n:] != bytes([n]) * n:
        raise CKRError(CKR.ENCRYPTED_DATA_INVALID, "C_Decrypt",
                       detail="the decrypted data has no valid PKCS#7 padding "
                              "(wrong key or file?)")
    return data[:-n]


# -- a slot's mechanism list ---------------------------------------------------------
#: pkcs11-tool's words for the mechanism flags, in its order
_FLAG_WORDS: tuple[tuple[MechanismFlag, str], ...] = (
    (MechanismFlag.HW, "hw"), (MechanismFlag.ENCRYPT, "encrypt"),
    (MechanismFlag.DECRYPT, "decrypt"), (MechanismFlag.DIGEST, "digest"),
    (MechanismFlag.SIGN, "sign"), (MechanismFlag.SIGN_RECOVER, "sign_recover"),
    (MechanismFlag.VERIFY, "verify"), (MechanismFlag.VERIFY_RECOVER, "verify_recover"),
    (MechanismFlag.GENERATE, "generate"), (MechanismFlag.GENERATE_KEY_PAIR, "generate_key_pair"),
    (MechanismFlag.WRAP, "wrap"), (MechanismFlag.UNWRAP, "unwrap"),
    (MechanismFlag.DERIVE, "derive"), (MechanismFlag.EC_F_P, "EC F_P"),
    (MechanismFlag.EC_F_2M, "EC F_2M"), (MechanismFlag.EC_ECPARAMETERS, "EC parameters"),
    (MechanismFlag.EC_NAMEDCURVE, "EC OID"), (MechanismFlag.EC_UNCOMPRESS, "EC uncompressed"),
    (MechanismFlag.EC_COMPRESS, "EC compressed"),
)


@dataclass(frozen=True)
class MechanismRecord:
    """One mechanism of a slot, with its ``C_GetMechanismInfo``."""

    mechanism: Any
    min_key_size: int
    max_key_size: int
    flags: int

    @property
    def name(self) -> str:
        return tool_name(self.mechanism)

    def flag_words(self) -> list[str]:
        """pkcs11-tool's words for the flags (``sign``, ``EC OID``)."""
        return [word for flag, word in _FLAG_WORDS if self.flags & flag]

    def flag_names(self) -> list[str]:
        """The flags' ``CKF_`` names."""
        return [f"CKF_{flag.name}" for flag, _word in _FLAG_WORDS if self.flags & flag]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ckm": ckm_name(self.mechanism),
                "value": int(self.mechanism), "min_key_size": self.min_key_size,
                "max_key_size": self.max_key_size, "flags": self.flag_words()}

    def line(self) -> str:
        """``SHA256-RSA-PKCS, keySize={512,16384}, sign, verify`` as pkcs11-tool -M."""
        parts = [self.name]
        if self.min_key_size or self.max_key_size:
            parts.append(f"keySize={{{self.min_key_size},{self.max_key_size}}}")
        return ", ".join(parts + self.flag_words())


def mechanism_record(session: VirtualSession, mechanism: Any) -> MechanismRecord:
    """``C_GetMechanismInfo`` of one mechanism on the session's slot."""
    info = session.mechanism_info(mechanism)
    return MechanismRecord(mechanism, int(info.min_key_length or 0),
                           int(info.max_key_length or 0), int(info.flags))


def mechanism_list(session: VirtualSession) -> list[MechanismRecord]:
    """Every mechanism of the session's slot with its info (``pkcs11-tool -M``)."""
    return [mechanism_record(session, m) for m in session.mechanisms()]


__all__ = ["MENU_VIEWS", "TABLE", "Mech", "MechanismRecord", "Use", "ckm_name", "find",
           "mechanism_list", "mechanism_record", "names", "pad", "tool_name", "unpad", "view"]
