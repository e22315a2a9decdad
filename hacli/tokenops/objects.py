"""Objects on a slot: reading their attributes, listing them, a key by its label."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pkcs11 import Attribute, KeyType, ObjectClass

from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.errors import UsageError
from hacli.tokenops.mechanisms import Mech, Use

if TYPE_CHECKING:
    from hacli.engine.session import VirtualSession

#: Attributes the menu's 27 Display Object reads (those an object lacks are skipped).
DISPLAY = (
    Attribute.CLASS, Attribute.KEY_TYPE, Attribute.LABEL, Attribute.ID, Attribute.APPLICATION,
    Attribute.TOKEN, Attribute.PRIVATE, Attribute.MODIFIABLE, Attribute.SENSITIVE,
    Attribute.EXTRACTABLE, Attribute.ALWAYS_SENSITIVE, Attribute.NEVER_EXTRACTABLE,
    Attribute.LOCAL, Attribute.WRAP_WITH_TRUSTED, Attribute.TRUSTED, Attribute.ENCRYPT,
    Attribute.DECRYPT, Attribute.SIGN, Attribute.VERIFY, Attribute.WRAP, Attribute.UNWRAP,
    Attribute.DERIVE, Attribute.VALUE_LEN, Attribute.MODULUS_BITS, Attribute.MODULUS,
    Attribute.PUBLIC_EXPONENT, Attribute.EC_PARAMS, Attribute.EC_POINT, Attribute.VALUE,
)

#: What a listing reads of each object (``hacli objects``, like ``pkcs11-tool -O``).
LISTED = (Attribute.CLASS, Attribute.KEY_TYPE, Attribute.LABEL, Attribute.ID, Attribute.TOKEN,
          Attribute.PRIVATE, Attribute.MODULUS_BITS, Attribute.MODULUS, Attribute.VALUE_LEN,
          Attribute.EC_PARAMS)

#: The key classes each operation uses: (for the operation, for its inverse).
KEY_CLASSES: dict[str, tuple[ObjectClass, ...]] = {
    "sign": (ObjectClass.PRIVATE_KEY, ObjectClass.SECRET_KEY),
    "verify": (ObjectClass.PUBLIC_KEY, ObjectClass.SECRET_KEY),
    "encrypt": (ObjectClass.SECRET_KEY, ObjectClass.PUBLIC_KEY),
    "decrypt": (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY),
}


def attribute_name(attr: Any) -> str:
    """``CKA_LABEL`` (``0x...`` for an attribute python-pkcs11 does not name)."""
    name = getattr(attr, "name", None)
    return f"CKA_{name}" if name else f"0x{int(attr):08X}"


def format_value(value: Any) -> str:
    """An attribute value for people: ``CKO_``/``CKK_`` names, hex with its length."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, enum.Enum):
        prefix = {"ObjectClass": "CKO_", "KeyType": "CKK_"}.get(type(value).__name__, "")
        return f"{prefix}{value.name}"
    if isinstance(value, bytes | bytearray):
        return f"{bytes(value).hex()} ({len(value)} bytes)"
    return str(value)


def read_attributes(session: VirtualSession, handle: int,
                    attrs: tuple[Any, ...] = DISPLAY) -> dict[Any, Any]:
    """Every readable attribute of ``attrs``; sensitive ones as ``None``, ones the
    object does not have left out."""
    out: dict[Any, Any] = {}
    for a in attrs:
        try:
            out[a] = session.get_attribute(handle, a)
        except CKRError as e:
            if e.ckr == CKR.ATTRIBUTE_SENSITIVE:
                out[a] = None
            elif e.ckr not in (CKR.ATTRIBUTE_TYPE_INVALID, CKR.ARGUMENTS_BAD,
                               CKR.FUNCTION_FAILED, CKR.KEY_FUNCTION_NOT_PERMITTED):
                raise
        except (KeyError, NotImplementedError):
            continue
    return out


def object_summary(session: VirtualSession, handle: int) -> str:
    """``CKO_SECRET_KEY CKK_AES 'label'``: one object in a line."""
    attrs = read_attributes(session, handle, (Attribute.CLASS, Attribute.KEY_TYPE,
                                              Attribute.LABEL))
    parts = [format_value(attrs[a]) for a in (Attribute.CLASS, Attribute.KEY_TYPE) if a in attrs]
    label = attrs.get(Attribute.LABEL)
    return " ".join(parts) + (f" '{label}'" if label else "")


def curve_name(ec_params: bytes) -> str | None:
    """The named curve of ``CKA_EC_PARAMS`` (``secp256r1``), None when not named."""
    from asn1crypto.keys import ECDomainParameters

    try:
        params = ECDomainParameters.load(bytes(ec_params))
        return str(params.chosen.native) if params.name == "named" else None
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class ObjectRecord:
    """One object as a listing shows it (``pkcs11-tool -O``): never a value."""

    object_class: str  # CKO_PUBLIC_KEY, ...
    key_type: str | None  # CKK_RSA, ... (None for objects that are no keys)
    label: str
    id: str  # CKA_ID in hex
    token: bool  # token object (else a session object)
    private: bool  # seen only after login
    bits: int | None = None  # RSA modulus or secret key size
    curve: str | None = None  # EC keys

    @property
    def size(self) -> str:
        """``2048 bits``, ``secp256r1`` or ``""``."""
        return self.curve or (f"{self.bits} bits" if self.bits else "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(attrs: dict[Any, Any]) -> ObjectRecord:
    key_type = attrs.get(Attribute.KEY_TYPE)
    bits = attrs.get(Attribute.MODULUS_BITS)
    if bits is None and attrs.get(Attribute.MODULUS):  # private RSA keys lack MODULUS_BITS
        bits = len(attrs[Attribute.MODULUS]) * 8
    if bits is None and attrs.get(Attribute.VALUE_LEN):
        bits = int(attrs[Attribute.VALUE_LEN]) * 8
    params = attrs.get(Attribute.EC_PARAMS)
    return ObjectRecord(
        object_class=format_value(attrs.get(Attribute.CLASS)),
        key_type=format_value(key_type) if key_type is not None else None,
        label=str(attrs.get(Attribute.LABEL) or ""),
        id=bytes(attrs.get(Attribute.ID) or b"").hex(),
        token=bool(attrs.get(Attribute.TOKEN)), private=bool(attrs.get(Attribute.PRIVATE)),
        bits=int(bits) if bits else None,
        curve=curve_name(params) if params else None)


def list_objects(session: VirtualSession,
                 template: dict[Any, Any] | None = None) -> list[tuple[int, ObjectRecord]]:
    """(handle, record) of every object the session sees that matches ``template``
    (private objects only when the user is logged in)."""
    return [(h, _record(read_attributes(session, h, LISTED)))
            for h in session.find_objects(template or {})]


def _kinds(classes: tuple[ObjectClass, ...]) -> str:
    return " or ".join(c.name.lower().replace("_", " ") for c in classes)


def find_key(session: VirtualSession, label: str, operation: str, mech: Mech | None = None,
             key_id: bytes | None = None) -> int:
    """The handle of the one key labelled ``label`` (and with CKA_ID ``key_id``) that
    ``operation`` (sign, verify, encrypt, decrypt) can use with ``mech``.

    UsageError when there is none or more than one (nothing was done with any)."""
    classes = KEY_CLASSES[operation]
    template: dict[Any, Any] = {Attribute.LABEL: label}
    if key_id is not None:
        template[Attribute.ID] = key_id
    found = [(h, r) for h, r in list_objects(session, template)
             if r.object_class in {f"CKO_{c.name}" for c in classes}]
    what = f"{_kinds(classes)} labelled {label!r}" + \
        (f" with ID {key_id.hex()}" if key_id is not None else "")
    if mech is not None:
        fitting = [(h, r) for h, r in found if mech.fits(_key_type(r))]
        if found and not fitting:
            types = ", ".join(sorted({r.key_type or "?" for _h, r in found}))
            wanted = " or ".join(f"CKK_{t.name}" for t in mech.key_types)
            raise UsageError(f"{mech.name} needs a {wanted} key; the {what} is {types}")
        found = fitting
    if not found:
        hint = "" if session.group.logged_in else " (private objects are seen only after login)"
        raise UsageError(f"no {what}{hint}")
    if len(found) > 1:
        ids = ", ".join(r.id or "(none)" for _h, r in found)
        raise UsageError(f"{len(found)} keys match: {what}; choose one by its ID (--id): {ids}")
    return found[0][0]


def _key_type(record: ObjectRecord) -> KeyType | None:
    name = (record.key_type or "").removeprefix("CKK_")
    return KeyType[name] if name in KeyType.__members__ else None


def operation_use(operation: str) -> Use:
    """The mechanism table's use of an operation (sign and verify: SIGN)."""
    return Use.SIGN if operation in ("sign", "verify") else Use.ENCRYPT


__all__ = ["DISPLAY", "KEY_CLASSES", "LISTED", "ObjectRecord", "attribute_name", "curve_name",
           "find_key", "format_value", "list_objects", "object_summary", "operation_use",
           "read_attributes"]
