"""The group transport key: how sensitive keys travel between members.

Every member of a group holds the same AES-256 key, label ``hacli-transport``,
with ``CKA_TRUSTED = true`` (only the SO can set it).  Keys created through the
group carry ``CKA_WRAP_WITH_TRUSTED = true``: they can be wrapped
(``CKM_AES_KEY_WRAP_PAD``) only under a trusted key, i.e. the transport key,
and unwrapped on another member that holds the same value.

Provisioning (:func:`provision_transport_key`, idempotent, needs the SO PIN):

* no member has it: 32 random bytes are drawn from a member's RNG and the key
  is created on every member in the same run (SO session);
* some members have it (they must agree: checked by wrapping a fixed test key
  under it on each, AES key wrap being deterministic) and others do not: the
  existing key is copied to each new member under a *one-time* trusted AES key
  created, from fresh random bytes, as a session object in an SO session on the
  source and on the new member; wrap on the source, unwrap on the new member,
  the one-time key disappears with the SO sessions;
* members that already have it are left alone.

Security reasoning: the transport key's value (or the one-time key that
protects it) is in host memory only for the duration of an SO-authenticated
provisioning run, is never written anywhere, and no PIN or key value is logged.
The key is a public object (the SO cannot create private ones), sensitive, and
usable only for wrap/unwrap (``CKA_ENCRYPT``/``CKA_DECRYPT`` false).  Known
limit: a holder of the user PIN can unwrap a blob made under the transport key
with a template of their choosing; a token supporting ``CKA_UNWRAP_TEMPLATE``
should pin ``CKA_SENSITIVE``/``CKA_EXTRACTABLE`` there (SoftHSM2 via
python-pkcs11 cannot express it).
"""

from __future__ import annotations

import contextlib
import shutil
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.conf.model_types import HAConfig
from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.member import MAPPER, TRANSPORT_ID, TRANSPORT_LABEL
from hacli.engine.module import InstanceRegistry, make_workdir
from hacli.errors import EngineError, UsageError

if TYPE_CHECKING:
    from hacli.engine.p11types import P11Key

WRAP = Mechanism.AES_KEY_WRAP_PAD

_TRANSPORT_ATTRS = {
    Attribute.PRIVATE: False,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: True,
    Attribute.WRAP_WITH_TRUSTED: True,
    Attribute.TRUSTED: True,
    Attribute.WRAP: True,
    Attribute.UNWRAP: True,
    Attribute.ENCRYPT: False,
    Attribute.DECRYPT: False,
    Attribute.MODIFIABLE: False,
}


def _find(session: Any) -> Any:
    found = list(session.get_objects({Attribute.LABEL: TRANSPORT_LABEL,
                                      Attribute.CLASS: ObjectClass.SECRET_KEY}))
    return found[0] if found else None


def _fingerprint(session: Any, key: P11Key) -> bytes:
    """Wrap a fixed all-zero test key under ``key``: equal values give equal blobs."""
    probe = session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: bytes(16), Attribute.TOKEN: False, Attribute.PRIVATE: False,
        Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
    try:
        return key.wrap_key(probe, mechanism=WRAP)
    except pkcs11.MechanismInvalid:
        # the module cannot carry the wrap mechanism (p11-kit 0.24 RPC): no
        # fingerprint; the key is still "present"
        return b"?"
    finally:
        probe.destroy()


def _one_time_key(session: Any, value: bytes) -> Any:
    return session.create_object({
        Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
        Attribute.VALUE: value, Attribute.TOKEN: False, Attribute.PRIVATE: False,
        Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.TRUSTED: True,
        Attribute.WRAP: True, Attribute.UNWRAP: True, Attribute.ENCRYPT: False,
        Attribute.DECRYPT: False})


def provision_transport_key(config: HAConfig, group_label: str, so_pin: str,
                            user_pin: str | None = None) -> dict[str, str]:
    """Make sure every reachable member of the group holds the transport key.

    Returns serial -> ``"present"`` (left alone), ``"created"``, ``"copied"``
    or ``"unreachable: CKR_..."``.  Raises :class:`~hacli.errors.EngineError`
    when no member is reachable or members disagree on the key.  ``user_pin``,
    when given, checks that the user can see and use the key.
    """
    group = config.group(group_label) if group_label else None
    if group is None:
        raise UsageError(f"no HA group named {group_label!r}")
    timeout = max(0.001, config.settings.receive_timeout_ms / 1000.0)
    workdir = make_workdir("hacli-provision-")
    registry = InstanceRegistry(workdir)
    result: dict[str, str] = {}
    sessions: dict[str, tuple[Any, Any]] = {}  # serial -> (instance, SO session)
    try:
        for serial in group.members:
            loc = config.location(serial)
            if loc is None:
                result[serial] = f"unreachable: {CKR.TOKEN_NOT_PRESENT}"
                continue
            inst = registry.current(loc.library, loc.env, serial)
            try:
                inst.load(timeout)
                token = inst.call(lambda lib=inst.lib, s=serial: lib.get_token(
                    token_serial=s.encode()), timeout=timeout)
                so = inst.call(lambda t=token: t.open(rw=True, so_pin=so_pin,
                                                      attribute_mapper=MAPPER), timeout=timeout)
            except pkcs11.PinIncorrect as e:
                raise CKRError(CKR.PIN_INCORRECT, "C_Login", serial,
                               detail="wrong SO PIN") from e
            except Exception as e:
                result[serial] = f"unreachable: {ckr_name(e)}"
                continue
            sessions[serial] = (inst, so)
        if not sessions:
            raise EngineError(f"no member of HA group {group.label!r} is reachable")

        have: dict[str, bytes] = {}
        for serial, (inst, so) in sessions.items():
            def check(so: Any = so) -> bytes | None:
                key = _find(so)
                return _fingerprint(so, key) if key is not None else None

            fp = inst.call(check, timeout=timeout)
            if fp is not None:
                have[serial] = fp
        if len(set(have.values()) - {b"?"}) > 1:
            raise EngineError(f"members of {group.label!r} hold different transport keys: "
                              f"{', '.join(sorted(have))}")
        missing = [s for s in sessions if s not in have]
        for s in have:
            result[s] = "present"
        if not missing:
            return result

        if not have:
            first_inst, first_so = next(iter(sessions.values()))
            value = first_inst.call(lambda: first_so.generate_random(256), timeout=timeout)
            template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: value, Attribute.TOKEN: True,
                        Attribute.LABEL: TRANSPORT_LABEL, Attribute.ID: TRANSPORT_ID,
                        **_TRANSPORT_ATTRS}
            for serial in missing:
                inst, so = sessions[serial]
                inst.call(lambda so=so: so.create_object(template), timeout=timeout)
                result[serial] = "created"
            del value, template
        elif set(have.values()) == {b"?"}:
            # cannot wrap through these modules: a joining member cannot get
            # the existing value, and replication uses value transfer anyway
            for serial in missing:
                result[serial] = f"unsupported: {CKR.MECHANISM_INVALID}"
        else:
            src = next(s for s, fp in have.items() if fp != b"?")
            src_inst, src_so = sessions[src]
            for serial in missing:
                inst, so = sessions[serial]
                otk = src_inst.call(lambda: src_so.generate_random(256), timeout=timeout)
                src_key = src_inst.call(lambda v=otk: _one_time_key(src_so, v), timeout=timeout)
                dst_key = inst.call(lambda v=otk, so=so: _one_time_key(so, v), timeout=timeout)
                del otk
                blob = src_inst.call(lambda k=src_key: k.wrap_key(_find(src_so), mechanism=WRAP),
                                     timeout=timeout)
                inst.call(lambda k=dst_key, b=blob: k.unwrap_key(
                    ObjectClass.SECRET_KEY, KeyType.AES, b, id=TRANSPORT_ID,
                    label=TRANSPORT_LABEL, store=True, mechanism=WRAP,
                    template=dict(_TRANSPORT_ATTRS)), timeout=timeout)
                src_inst.call(src_key.destroy, timeout=timeout)
                inst.call(dst_key.destroy, timeout=timeout)
                fp = inst.call(lambda so=so: _fingerprint(so, _find(so)), timeout=timeout)
                if fp != have[src]:
                    raise EngineError(f"transport key copied to {serial} does not match")
                result[serial] = "copied"

        if user_pin is not None:
            for serial, (inst, so) in sessions.items():
                inst.call(so.close, timeout=timeout)

                def user_check(inst: Any = inst, serial: str = serial) -> None:
                    tok = inst.lib.get_token(token_serial=serial.encode())
                    with tok.open(rw=True, user_pin=user_pin, attribute_mapper=MAPPER) as us:
                        if _find(us) is None:
                            raise EngineError(f"transport key not visible on {serial}")

                inst.call(user_check, timeout=timeout)
            sessions.clear()
        return result
    finally:
        for inst, so in sessions.values():
            with contextlib.suppress(Exception):
                inst.call(so.close, timeout=timeout)
        registry.close()
        shutil.rmtree(workdir, ignore_errors=True)


__all__ = ["TRANSPORT_ID", "TRANSPORT_LABEL", "provision_transport_key"]
