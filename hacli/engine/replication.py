"""Copying objects between members: identities, export/import.

Everything here that touches a python-pkcs11 object runs on the member's
worker thread (called through ``Member.run``); the orchestration (which member
to copy from, policy, bookkeeping) is in :mod:`hacli.engine.replicas` and
:mod:`hacli.engine.sync`.

How an object travels (docs/engine.md, "Replication"):

* public keys, certificates and data objects: *by value* (their attributes
  are not secret);
* secret and private keys: only *wrapped* under the group transport key
  (``CKM_AES_KEY_WRAP_PAD``), never in the clear.

Key material is never put in an exception, a log line or a ``repr``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine.ckr import is_member_failure
from hacli.engine.member import TRANSPORT_LABEL, Connection
from hacli.engine.types import ObjectSummary

WRAP_MECHANISM = Mechanism.AES_KEY_WRAP_PAD

# Attributes that identify an object on a member (a search template).
IDENT_KEY = (Attribute.KEY_TYPE, Attribute.ID, Attribute.LABEL, Attribute.TOKEN)
IDENT_DATA = (Attribute.LABEL, Attribute.APPLICATION, Attribute.TOKEN)
IDENT_CERT = (Attribute.CERTIFICATE_TYPE, Attribute.ID, Attribute.LABEL, Attribute.TOKEN)
KEY_CLASSES = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
#: Classes whose objects travel only under the transport key (or by the policy).
SECRET_CLASSES = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
#: Classes a token inventory covers.
INVENTORY_CLASSES = (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY,
                     ObjectClass.CERTIFICATE, ObjectClass.DATA)

# Attributes copied to replicas, per class (values for non-secret objects).
COPY_COMMON = (Attribute.TOKEN, Attribute.PRIVATE, Attribute.LABEL)
COPY = {
    ObjectClass.SECRET_KEY: (Attribute.ID, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN,
                             Attribute.VERIFY, Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE,
                             Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                             Attribute.WRAP_WITH_TRUSTED),
    ObjectClass.PRIVATE_KEY: (Attribute.ID, Attribute.SIGN, Attribute.DECRYPT, Attribute.UNWRAP,
                              Attribute.DERIVE, Attribute.SENSITIVE, Attribute.EXTRACTABLE,
                              Attribute.WRAP_WITH_TRUSTED),
    ObjectClass.PUBLIC_KEY: (Attribute.KEY_TYPE, Attribute.ID, Attribute.VERIFY, Attribute.ENCRYPT,
                             Attribute.WRAP, Attribute.DERIVE, Attribute.MODULUS,
                             Attribute.PUBLIC_EXPONENT, Attribute.EC_PARAMS, Attribute.EC_POINT),
    ObjectClass.DATA: (Attribute.APPLICATION, Attribute.VALUE, Attribute.OBJECT_ID),
    ObjectClass.CERTIFICATE: (Attribute.CERTIFICATE_TYPE, Attribute.ID, Attribute.SUBJECT,
                              Attribute.ISSUER, Attribute.SERIAL_NUMBER, Attribute.VALUE),
}

#: Why a member cannot take part in wrapped transfer, for error messages.
NO_TRANSPORT_KEY = (f"it holds no transport key ({TRANSPORT_LABEL!r}; the SO provisions it: "
                    "hacli.engine.provision_transport_key, or `hacli lab up` on the lab)")
NO_WRAP_MECHANISM = ("its PKCS#11 module does not offer CKM_AES_KEY_WRAP_PAD (p11-kit's RPC "
                     "before hacli's patch forwards no AES key-wrap mechanism; see docs/lab.md)")


def read_attrs(obj: Any, attrs: Iterable[Any]) -> dict[Any, Any]:
    """Read what the object has of ``attrs``: in one call when the token has
    them all, else one at a time (tokens differ)."""
    names = list(attrs)
    try:
        return dict(obj.get_attributes(names))
    except pkcs11.PKCS11Error as e:
        if is_member_failure(e):
            raise
    except (KeyError, ValueError, NotImplementedError, TypeError):
        pass
    out: dict[Any, Any] = {}
    for a in names:
        try:
            out[a] = obj[a]
        except pkcs11.PKCS11Error as e:
            if is_member_failure(e):
                raise
        except (KeyError, ValueError, NotImplementedError):
            pass
    return out


def ident_of(obj: Any) -> dict[Any, Any]:
    """The search template that identifies ``obj`` on any member."""
    cls = obj[Attribute.CLASS]
    names: tuple[Attribute, ...]
    if cls in KEY_CLASSES:
        names = IDENT_KEY
    elif cls == ObjectClass.DATA:
        names = IDENT_DATA
    elif cls == ObjectClass.CERTIFICATE:
        names = IDENT_CERT
    else:
        names = (Attribute.LABEL, Attribute.TOKEN)
    ident = {Attribute.CLASS: cls}
    ident.update(read_attrs(obj, names))
    return ident


def ident_key(ident: dict[Any, Any]) -> tuple[tuple[int, Any], ...]:
    """A hashable form of an identity (for inventories)."""
    return tuple(sorted((int(k), v if not isinstance(v, bytearray) else bytes(v))
                        for k, v in ident.items()))


def summarize(ident: dict[Any, Any], info: dict[Any, Any] | None = None) -> ObjectSummary:
    """The :class:`ObjectSummary` of an identity (no value, ever)."""
    info = info or {}
    cls = ident.get(Attribute.CLASS)
    try:
        cls_name = "CKO_" + ObjectClass(cls).name  # type: ignore[arg-type]
    except (ValueError, TypeError):
        cls_name = f"CKO_0x{int(cls or 0):08X}"
    kt = ident.get(Attribute.KEY_TYPE)
    key_type = None
    if kt is not None:
        try:
            key_type = "CKK_" + KeyType(kt).name.lstrip("_")
        except ValueError:
            key_type = f"CKK_0x{int(kt):08X}"
    kid = ident.get(Attribute.ID)
    sensitive = info.get(Attribute.SENSITIVE)
    return ObjectSummary(object_class=cls_name, label=ident.get(Attribute.LABEL),
                         id=bytes(kid).hex() if kid else None, key_type=key_type,
                         application=ident.get(Attribute.APPLICATION) or None,
                         sensitive=None if sensitive is None else bool(sensitive))


def wrap_problem(conn: Connection | None) -> str | None:
    """Why ``conn``'s member cannot send or receive a key under the transport
    key, or None when it can."""
    if conn is None:
        return "the member is not connected"
    if conn.transport is None:
        return NO_TRANSPORT_KEY
    if not conn.can_wrap:
        return NO_WRAP_MECHANISM
    return None


# ---------------------------------------------------------------------------
# worker-side transfer

def export(conn: Connection, obj: Any, cls: Any, how: str) -> dict[str, Any]:
    """Read what is needed to recreate ``obj`` elsewhere (worker thread).

    ``how``: ``"wrap"`` (secret/private keys, under the transport key) or
    ``"value"`` (public objects: their attributes).  A secret or private key
    is never exported by value.
    """
    attrs = read_attrs(obj, COPY_COMMON + COPY.get(cls, ()))
    attrs[Attribute.CLASS] = cls
    if cls not in SECRET_CLASSES:
        return {"attrs": attrs, "wrapped": None}
    if how != "wrap":
        raise pkcs11.KeyNotWrappable()
    attrs[Attribute.KEY_TYPE] = obj[Attribute.KEY_TYPE]
    if conn.transport is None:
        raise pkcs11.WrappingKeyHandleInvalid()
    return {"attrs": attrs, "wrapped": conn.transport.wrap_key(obj, mechanism=WRAP_MECHANISM)}


def import_(conn: Connection, data: dict[str, Any]) -> Any:
    """Create the object described by :func:`export` on ``conn``'s member."""
    attrs = dict(data["attrs"])
    if data["wrapped"] is None:
        return conn.work.create_object(attrs)
    if conn.transport is None:
        raise pkcs11.UnwrappingKeyHandleInvalid()
    cls = attrs.pop(Attribute.CLASS)
    key_type = attrs.pop(Attribute.KEY_TYPE)
    return conn.transport.unwrap_key(cls, key_type, data["wrapped"], mechanism=WRAP_MECHANISM,
                                     store=bool(attrs.pop(Attribute.TOKEN, False)),
                                     template=attrs)


_INFO = (Attribute.SENSITIVE, Attribute.EXTRACTABLE)


def list_token_objects(conn: Connection) -> list[tuple[dict[Any, Any], dict[Any, Any]]]:
    """Every token object of the inventory classes on ``conn``'s member, as
    (identity, info) pairs; the transport key is not listed (worker thread)."""
    out = []
    for cls in INVENTORY_CLASSES:
        for obj in conn.work.get_objects({Attribute.CLASS: cls, Attribute.TOKEN: True}):
            ident = ident_of(obj)
            if cls == ObjectClass.SECRET_KEY and ident.get(Attribute.LABEL) == TRANSPORT_LABEL:
                continue
            info = read_attrs(obj, _INFO) if cls in SECRET_CLASSES else {}
            out.append((ident, info))
    return out


def find_first(conn: Connection, ident: dict[Any, Any]) -> Any:
    """The first object matching ``ident`` on ``conn``'s member, or None."""
    # consume the whole search: a half-read python-pkcs11 search would end
    # (C_FindObjectsFinal) whenever it is garbage-collected, on any thread
    found = list(conn.work.get_objects(ident))
    return found[0] if found else None


__all__ = ["COPY", "COPY_COMMON", "INVENTORY_CLASSES", "SECRET_CLASSES",
           "WRAP_MECHANISM", "export", "find_first", "ident_key", "ident_of",
           "import_", "list_token_objects", "read_attrs", "summarize", "wrap_problem"]
