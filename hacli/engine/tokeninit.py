"""``C_InitToken`` on one member: python-pkcs11 does not expose it.

The call goes through ctypes to the module python-pkcs11 loaded for a
*private* module instance (:meth:`hacli.engine.Engine.init_token` makes one):
a token refuses ``C_InitToken`` while the application has a session open on
it (``CKR_SESSION_EXISTS``), and the engine's own connection to a member
always has one (its work session).  A private instance is another
application as far as the token can tell: for ``p11-kit-client.so`` a
connection of its own, served by a ``p11-kit-remote`` process of its own;
for a module loaded directly, a copy of its own (docs/engine.md, "Module
instances").

The SO PIN goes to the module and nowhere else; it is never put in a message.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

import pkcs11

from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.member import MAPPER
from hacli.engine.module import ENV_GATE

if TYPE_CHECKING:
    from hacli.engine.module import ModuleInstance

#: ``CK_TOKEN_INFO.label``: 32 bytes, blank padded, not NUL terminated.
LABEL_LENGTH = 32

_CK_RV = ctypes.c_ulong  # CK_ULONG is unsigned long on the LP64 systems hacli runs on


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


#: The head of ``CK_FUNCTION_LIST`` in PKCS#11's order (pkcs11f.h), up to C_InitToken.
_HEAD = ("C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList",
         "C_GetSlotInfo", "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo",
         "C_InitToken")


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version), *((name, ctypes.c_void_p) for name in _HEAD)]


_INITIALIZE = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_void_p)
_GET_SLOT_LIST = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_ubyte, ctypes.POINTER(ctypes.c_ulong),
                                  ctypes.POINTER(ctypes.c_ulong))
_GET_TOKEN_INFO = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_ulong, ctypes.c_void_p)
_INIT_TOKEN = ctypes.CFUNCTYPE(_CK_RV, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong,
                               ctypes.c_char_p)

#: Where ``serialNumber[16]`` sits in ``CK_TOKEN_INFO`` (after label[32],
#: manufacturerID[32], model[16]); the whole structure is under 256 bytes.
_SERIAL_AT = 80
_TOKEN_INFO_SIZE = 512


def token_label(label: str) -> bytes:
    """``label`` as ``C_InitToken`` takes it (``CKR_ARGUMENTS_BAD`` if it does not fit)."""
    raw = label.encode("utf-8")
    if not raw.strip() or len(raw) > LABEL_LENGTH:
        raise CKRError(CKR.ARGUMENTS_BAD, "C_InitToken",
                       detail=f"a token label is 1 to {LABEL_LENGTH} bytes")
    return raw.ljust(LABEL_LENGTH, b" ")


def _check(rv: int, operation: str, serial: str) -> None:
    if rv:
        raise CKRError(ckr_name(int(rv)), operation, serial)


def find_slot(instance: ModuleInstance, serial: str) -> Any:
    """The python-pkcs11 slot holding the token ``serial`` (opens no session)."""
    for slot in instance.lib.get_slots(token_present=True):
        try:
            token = slot.get_token()
        except (pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised):
            continue
        if token.serial.decode("ascii", "replace").strip() == serial:
            return slot
    raise CKRError(CKR.TOKEN_NOT_PRESENT, "C_GetSlotList", serial)


def _slot_of(table: _FunctionList, serial: str) -> int:
    """The slot ID of token ``serial`` in this function list's own numbering
    (a p11-kit connection numbers the slots its own way)."""
    count = ctypes.c_ulong(0)
    get_list = _GET_SLOT_LIST(table.C_GetSlotList)
    _check(get_list(1, None, ctypes.byref(count)), "C_GetSlotList", serial)
    slots = (ctypes.c_ulong * max(1, count.value))()
    _check(get_list(1, slots, ctypes.byref(count)), "C_GetSlotList", serial)
    info = ctypes.create_string_buffer(_TOKEN_INFO_SIZE)
    for slot_id in slots[:count.value]:
        if _GET_TOKEN_INFO(table.C_GetTokenInfo)(slot_id, info) == CKR.OK.rv:
            found = info.raw[_SERIAL_AT:_SERIAL_AT + 16].decode("ascii", "replace").strip()
            if found == serial:
                return int(slot_id)
    raise CKRError(CKR.TOKEN_NOT_PRESENT, "C_GetSlotList", serial)


def init_token(instance: ModuleInstance, serial: str, so_pin: str, label: str,
               user_pin: str | None = None) -> None:
    """``C_InitToken`` on the token ``serial`` of a private, loaded ``instance``
    (run it on the instance: ``instance.call``); then, with ``user_pin``, an SO
    session sets the user PIN (``C_InitPIN``), which a new token lacks."""
    padded = token_label(label)
    slot = find_slot(instance, serial)
    # The copy python-pkcs11 loaded (``lib.so``; an instance may reuse one an
    # earlier instance loaded) is deleted from disk, but the loader still knows
    # it by that name: RTLD_NOLOAD hands back the loaded module.
    module = ctypes.CDLL(instance.lib.so, mode=os.RTLD_NOLOAD)
    functions = ctypes.POINTER(_FunctionList)()
    with ENV_GATE.enter(instance.env):
        # p11-kit-client hands out a new list, a connection of its own (to the
        # address in the environment now), to be initialised; another module
        # its one list, initialised already
        _check(module.C_GetFunctionList(ctypes.byref(functions)), "C_GetFunctionList", serial)
        table = functions.contents
        rv = _INITIALIZE(table.C_Initialize)(None)
    if rv not in (CKR.OK.rv, CKR.CRYPTOKI_ALREADY_INITIALIZED.rv):
        _check(rv, "C_Initialize", serial)
    try:
        pin = so_pin.encode("utf-8")
        _check(_INIT_TOKEN(table.C_InitToken)(_slot_of(table, serial), pin, len(pin), padded),
               "C_InitToken", serial)
    finally:
        if rv == CKR.OK.rv:  # this call initialised it: finalise what it began
            _INITIALIZE(table.C_Finalize)(None)
    if user_pin is not None:
        session = slot.get_token().open(rw=True, so_pin=so_pin, attribute_mapper=MAPPER)
        try:
            session.init_pin(user_pin)
        finally:
            session.close()


__all__ = ["LABEL_LENGTH", "find_slot", "init_token", "token_label"]
