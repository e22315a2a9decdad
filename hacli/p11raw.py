"""Just enough of a PKCS#11 module through ctypes, for the calls python-pkcs11 lacks.

python-pkcs11 0.10 has no ``C_InitToken``.  Two places need it: the lab's
probe (:mod:`hacli.lab.probe`), which creates the members' tokens in a child
Python that has the standard library only, and the engine's Init Token on a
member (:mod:`hacli.engine.tokeninit`), on a module python-pkcs11 has loaded.
Both use this module, which imports nothing but the standard library for that
reason.

A failed call raises :class:`P11CallError`, whose text writes the return
value as ``CKR_0x%08X`` (the form :func:`hacli.engine.ckr_name` gives an
unknown number): a caller that has hacli's table names it
(:func:`hacli.lab.tokens.name_codes`, or ``ckr_name(error.rv)``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

CK_ULONG = ctypes.c_ulong
CK_RV = CK_ULONG
CK_SLOT_ID = CK_ULONG
CK_SESSION_HANDLE = CK_ULONG
CK_BYTE_P = ctypes.c_char_p

CKF_TOKEN_INITIALIZED = 0x400
CKF_RW_SESSION = 0x2
CKF_SERIAL_SESSION = 0x4
CKU_SO = 0
#: ``CK_TOKEN_INFO.label``: 32 bytes, blank padded, not NUL terminated.
LABEL_LENGTH = 32


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        *[(f"counter{i}", CK_ULONG) for i in range(10)],
        ("hardwareVersion", Version),
        ("firmwareVersion", Version),
        ("utcTime", ctypes.c_char * 16),
    ]


# The CK_FUNCTION_LIST prefix used here, in the standard's order (v2.40 §5.2).
FUNCTIONS: list[tuple[str, list[Any]]] = [
    ("C_Initialize", [ctypes.c_void_p]),
    ("C_Finalize", [ctypes.c_void_p]),
    ("C_GetInfo", [ctypes.c_void_p]),
    ("C_GetFunctionList", [ctypes.c_void_p]),
    ("C_GetSlotList", [ctypes.c_ubyte, ctypes.POINTER(CK_SLOT_ID), ctypes.POINTER(CK_ULONG)]),
    ("C_GetSlotInfo", [CK_SLOT_ID, ctypes.c_void_p]),
    ("C_GetTokenInfo", [CK_SLOT_ID, ctypes.POINTER(TokenInfo)]),
    ("C_GetMechanismList", [CK_SLOT_ID, ctypes.c_void_p, ctypes.c_void_p]),
    ("C_GetMechanismInfo", [CK_SLOT_ID, CK_ULONG, ctypes.c_void_p]),
    ("C_InitToken", [CK_SLOT_ID, CK_BYTE_P, CK_ULONG, CK_BYTE_P]),
    ("C_InitPIN", [CK_SESSION_HANDLE, CK_BYTE_P, CK_ULONG]),
    ("C_SetPIN", [CK_SESSION_HANDLE, CK_BYTE_P, CK_ULONG, CK_BYTE_P, CK_ULONG]),
    (
        "C_OpenSession",
        [CK_SLOT_ID, CK_ULONG, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(CK_SESSION_HANDLE)],
    ),
    ("C_CloseSession", [CK_SESSION_HANDLE]),
    ("C_CloseAllSessions", [CK_SLOT_ID]),
    ("C_GetSessionInfo", [CK_SESSION_HANDLE, ctypes.c_void_p]),
    ("C_GetOperationState", [CK_SESSION_HANDLE, ctypes.c_void_p, ctypes.c_void_p]),
    ("C_SetOperationState", [CK_SESSION_HANDLE, ctypes.c_void_p, CK_ULONG, CK_ULONG, CK_ULONG]),
    ("C_Login", [CK_SESSION_HANDLE, CK_ULONG, CK_BYTE_P, CK_ULONG]),
    ("C_Logout", [CK_SESSION_HANDLE]),
]


class FunctionList(ctypes.Structure):
    _fields_ = [("version", Version)] + [(name, ctypes.c_void_p) for name, _ in FUNCTIONS]


class P11CallError(Exception):
    """A PKCS#11 call failed (``rv`` its return value), or the module cannot do
    what was asked (``rv`` None)."""

    def __init__(self, message: str, function: str | None = None, rv: int | None = None):
        super().__init__(message)
        self.function = function
        self.rv = rv


def text(field: bytes) -> str:
    """A blank-padded ``CK_TOKEN_INFO`` field as text."""
    return field.decode("utf-8", errors="replace").rstrip(" \0")


class Module:
    """A PKCS#11 module through its function list.

    *mode* is dlopen's: the default loads *path*; ``os.RTLD_NOLOAD`` takes a
    module already loaded under that name (python-pkcs11's, whose file may be
    gone).  The function list is asked for at once: ``p11-kit-client.so``
    reads ``P11_KIT_SERVER_ADDRESS`` then, and hands out a list of its own (a
    connection of its own, to initialise); other modules their one list.
    """

    def __init__(self, path: str, mode: int = os.RTLD_NOW | os.RTLD_LOCAL):
        self.path = path
        self._dll = ctypes.CDLL(path, mode=mode)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(FunctionList))]
        table = ctypes.POINTER(FunctionList)()
        self._check("C_GetFunctionList", get_list(ctypes.byref(table)))
        self._fn: dict[str, Any] = {}
        for name, argtypes in FUNCTIONS:
            proto = ctypes.CFUNCTYPE(CK_RV, *argtypes)
            self._fn[name] = proto(getattr(table.contents, name))

    def _check(self, name: str, rv: int) -> None:
        if rv != 0:  # CKR_OK (the names are in hacli.engine.ckr; stdlib only here)
            raise P11CallError(f"{name} failed: CKR_0x{rv:08X} ({self.path})", name, rv)

    def call_rv(self, name: str, *args: Any) -> int:
        """Call ``name`` and return its return value, whatever it is."""
        return int(self._fn[name](*args))

    def call(self, name: str, *args: Any) -> None:
        """Call ``name``; :class:`P11CallError` unless it returns ``CKR_OK`` (0)."""
        self._check(name, self.call_rv(name, *args))

    def slots(self, token_present: bool = True) -> list[int]:
        count = CK_ULONG(0)
        self.call("C_GetSlotList", int(token_present), None, ctypes.byref(count))
        ids = (CK_SLOT_ID * max(count.value, 1))()
        self.call("C_GetSlotList", int(token_present), ids, ctypes.byref(count))
        return list(ids[: count.value])

    def token_info(self, slot: int) -> TokenInfo:
        info = TokenInfo()
        self.call("C_GetTokenInfo", slot, ctypes.byref(info))
        return info

    def slot_of(self, serial: str) -> int:
        """The slot (in this function list's numbering) holding token ``serial``."""
        for slot in self.slots(True):
            if text(self.token_info(slot).serialNumber) == serial:
                return slot
        raise P11CallError(f"no token with serial {serial} ({self.path})")

    def mechanisms(self, slot: int) -> list[int]:
        count = CK_ULONG(0)
        self.call("C_GetMechanismList", slot, None, ctypes.byref(count))
        types = (CK_ULONG * max(count.value, 1))()
        self.call("C_GetMechanismList", slot, types, ctypes.byref(count))
        return list(types[: count.value])


def label_field(label: str) -> bytes:
    """``label`` as ``C_InitToken`` takes it (ValueError if it does not fit)."""
    raw = label.encode("utf-8")
    if not raw.strip() or len(raw) > LABEL_LENGTH:
        raise ValueError(f"a token label is 1 to {LABEL_LENGTH} bytes")
    return raw.ljust(LABEL_LENGTH, b" ")


__all__ = ["CKF_RW_SESSION", "CKF_SERIAL_SESSION", "CKF_TOKEN_INITIALIZED", "CKU_SO",
           "CK_SESSION_HANDLE", "LABEL_LENGTH", "Module", "P11CallError", "TokenInfo",
           "label_field", "text"]
