"""Templates of objects made through an HA group.

Every template is checked before python-pkcs11 sees it (:func:`checked`);
secret and private keys are made replicable (:func:`ha_key_attrs`) and get a
``CKA_ID`` so their replicas can be found on every member (:func:`random_id`).
No function here puts a value from a template into an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pkcs11 import Attribute, ObjectClass
from pkcs11.constants import MechanismFlag
from pkcs11.defaults import DEFAULT_KEY_CAPABILITIES

from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.engine.member import MAPPER

Template = Mapping[Any, Any]

_F = MechanismFlag
_CAPABILITIES = {
    ObjectClass.SECRET_KEY: {Attribute.ENCRYPT: _F.ENCRYPT, Attribute.DECRYPT: _F.DECRYPT,
                             Attribute.SIGN: _F.SIGN, Attribute.VERIFY: _F.VERIFY,
                             Attribute.WRAP: _F.WRAP, Attribute.UNWRAP: _F.UNWRAP,
                             Attribute.DERIVE: _F.DERIVE},
    ObjectClass.PUBLIC_KEY: {Attribute.ENCRYPT: _F.ENCRYPT, Attribute.VERIFY: _F.VERIFY,
                             Attribute.WRAP: _F.WRAP},
    ObjectClass.PRIVATE_KEY: {Attribute.DECRYPT: _F.DECRYPT, Attribute.SIGN: _F.SIGN,
                              Attribute.UNWRAP: _F.UNWRAP, Attribute.DERIVE: _F.DERIVE},
}


def random_id() -> bytes:
    """A CKA_ID for objects created without one, so replicas can be matched."""
    return os.urandom(16)


def capability_attrs(cls: Any, caps: int) -> dict[Any, bool]:
    """python-pkcs11's capability flags (``MechanismFlag``) as key attributes."""
    return {a: bool(caps & flag) for a, flag in _CAPABILITIES[cls].items()}


def key_template(cls: Any, key_type: Any, capabilities: int | None, template: Template | None,
                 token: bool, operation: str) -> dict[Any, Any]:
    """A new key's template: python-pkcs11's default capabilities for the key
    type (or ``capabilities``), then the caller's template (checked), then the
    token flag."""
    if capabilities is None:
        capabilities = DEFAULT_KEY_CAPABILITIES.get(key_type, 0)
    t = capability_attrs(cls, capabilities)
    t.update(checked(template, operation))
    t[Attribute.TOKEN] = token
    return t


def ha_key_attrs(template: dict[Any, Any], operation: str) -> dict[Any, Any]:
    """Secret and private keys made through a group must be replicable under the
    transport key only: extractable, but only wrapped by a trusted key."""
    if template.get(Attribute.EXTRACTABLE) is False:
        raise CKRError(CKR.TEMPLATE_INCONSISTENT, operation,
                       detail="keys of an HA group must be replicable (CKA_EXTRACTABLE "
                              "is set, restricted by CKA_WRAP_WITH_TRUSTED)")
    out = dict(template)
    out[Attribute.EXTRACTABLE] = True
    out[Attribute.WRAP_WITH_TRUSTED] = True
    return out


def take_id(given: bytes | None, template: dict[Any, Any]) -> bytes:
    """The CKA_ID of a new key: ``given``, else the template's, else a random one.

    Taken out of the template because python-pkcs11 sets CKA_ID from its own
    ``id=`` argument.
    """
    return given or template.pop(Attribute.ID, None) or random_id()


def checked(template: Template | None, operation: str) -> dict[Any, Any]:
    """A copy of ``template`` whose every value python-pkcs11 can encode.

    python-pkcs11 0.10 frees uninitialised pointers when encoding a template
    fails half-way (a str attribute given an int, ...), which crashes the
    process; so every template is encoded once here first.  The error names
    the attribute, never its value.
    """
    out = dict(template or {})
    for key, value in out.items():
        try:
            MAPPER.pack_attribute(key, value)
        except NotImplementedError:
            raise CKRError(CKR.ATTRIBUTE_TYPE_INVALID, operation,
                           detail=f"attribute {attr_name(key)} is not known") from None
        except Exception:
            raise CKRError(CKR.ATTRIBUTE_VALUE_INVALID, operation,
                           detail=f"{attr_name(key)}: a {type(value).__name__} is not a "
                                  "valid value") from None
    return out


def attr_name(key: Any) -> str:
    try:
        return "CKA_" + Attribute(key).name
    except (ValueError, TypeError):
        return repr(key) if not isinstance(key, int) else f"0x{key:08X}"


__all__ = ["Template", "attr_name", "capability_attrs",
           "checked", "ha_key_attrs", "key_template", "random_id", "take_id"]
