"""``C_InitToken`` on one member: python-pkcs11 does not expose it.

The call goes through ctypes (:mod:`hacli.p11raw`) to the module python-pkcs11
loaded for a *private* module instance (:meth:`hacli.engine.Engine.init_token`
makes one): a token refuses ``C_InitToken`` while the application has a
session open on it (``CKR_SESSION_EXISTS``), and the engine's own connection
to a member always has one (its work session).  A private instance is another
application as far as the token can tell: for ``p11-kit-client.so`` a
connection of its own, served by a ``p11-kit-remote`` process of its own; for
a module loaded directly, a copy of its own (docs/engine.md, "Module
instances").

The SO PIN goes to the module and nowhere else; it is never put in a message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.member import MAPPER
from hacli.engine.module import ENV_GATE
from hacli.p11raw import Module, P11CallError, label_field

if TYPE_CHECKING:
    from hacli.engine.module import ModuleInstance


def _raised(e: P11CallError, serial: str) -> CKRError:
    if e.rv is None:
        return CKRError(CKR.TOKEN_NOT_PRESENT, e.function or "C_GetSlotList", serial)
    return CKRError(ckr_name(e.rv), e.function or "", serial)


def init_token(instance: ModuleInstance, serial: str, so_pin: str, label: str,
               user_pin: str | None = None) -> None:
    """``C_InitToken`` on the token ``serial`` of a private, loaded ``instance``
    (run it on the instance: ``instance.call``); then, with ``user_pin``, an SO
    session sets the user PIN (``C_InitPIN``), which a new token lacks."""
    try:
        padded = label_field(label)
    except ValueError as e:
        raise CKRError(CKR.ARGUMENTS_BAD, "C_InitToken", detail=str(e)) from None
    try:
        # The copy python-pkcs11 loaded (``lib.so``; an instance may reuse one
        # an earlier instance loaded) is deleted from disk, but the loader
        # still knows it by that name: RTLD_NOLOAD hands back the loaded
        # module.  Its function list is asked for in the member's environment
        # (p11-kit-client connects to the address there).
        with ENV_GATE.enter(instance.env):
            module = Module(instance.lib.so, mode=os.RTLD_NOLOAD)
            rv = module.call_rv("C_Initialize", None)
        if rv not in (CKR.OK.rv, CKR.CRYPTOKI_ALREADY_INITIALIZED.rv):
            raise CKRError(ckr_name(rv), "C_Initialize", serial)
        try:
            pin = so_pin.encode("utf-8")
            # slot IDs in this list's own numbering (a p11-kit connection has its own)
            module.call("C_InitToken", module.slot_of(serial), pin, len(pin), padded)
        finally:
            if rv == CKR.OK.rv:  # this call initialised it: finalise what it began
                module.call_rv("C_Finalize", None)
    except P11CallError as e:
        raise _raised(e, serial) from None
    if user_pin is not None:
        token = instance.lib.get_token(token_serial=serial.encode())
        session = token.open(rw=True, so_pin=so_pin, attribute_mapper=MAPPER)
        try:
            session.init_pin(user_pin)
        finally:
            session.close()


__all__ = ["init_token"]
