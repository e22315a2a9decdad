"""A tiny PKCS#11 helper the lab runs in a *separate* Python process.

Why a separate process:

* ``SOFTHSM2_CONF`` must be set for SoftHSM2 only, never in the caller's
  environment (the caller may itself be an application with its own SoftHSM).
* ``p11-kit-client.so`` reads ``P11_KIT_SERVER_ADDRESS`` when it is loaded, and
  a module stays loaded for the life of a process: checking N members needs N
  copies loaded with N addresses, which must not pollute the caller.
* A hung member blocks any call into it; a child process can be killed.

Why ctypes and not python-pkcs11: python-pkcs11 0.10 has no ``C_InitToken``,
which creating a token needs, and the rest is four calls.

Protocol: one JSON request on stdin, one JSON answer on stdout.  PINs travel
on stdin only, never on a command line (``/proc/<pid>/cmdline`` is readable by
every user).

``{"op": "init", "library": L, "labels": [...], "pin": P, "so_pin": S}``
    initialises one free token per label (``SOFTHSM2_CONF`` from the
    environment), sets the user PIN, answers ``{"tokens": [{"label", "serial"}]}``.
``{"op": "list", "modules": [{"library": L, "env": {...}}, ...], "mechanisms": [M, ...]}``
    loads a private copy of each library with its environment and answers
    ``{"results": [[{"label", "serial"}, ...], ...]}`` (present tokens).  With
    ``"mechanisms"`` (optional), each token dict also has ``"missing"``: those
    of the mechanisms its slot's ``C_GetMechanismList`` does not list, in the
    order asked.  Through ``p11-kit-client.so`` that list is what the client
    build can forward (it drops mechanisms its RPC code does not know).
Failures answer ``{"error": "one line"}``; a failed call's return value is
written ``CKR_0x%08X``, which :func:`hacli.lab.tokens.run_probe` names.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
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

class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _TokenInfo(ctypes.Structure):
    _fields_ = [
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        *[(f"counter{i}", CK_ULONG) for i in range(10)],
        ("hardwareVersion", _Version),
        ("firmwareVersion", _Version),
        ("utcTime", ctypes.c_char * 16),
    ]


# The CK_FUNCTION_LIST prefix we use, in the standard's order (v2.40 §5.2).
_FUNCTIONS: list[tuple[str, list[Any]]] = [
    ("C_Initialize", [ctypes.c_void_p]),
    ("C_Finalize", [ctypes.c_void_p]),
    ("C_GetInfo", [ctypes.c_void_p]),
    ("C_GetFunctionList", [ctypes.c_void_p]),
    ("C_GetSlotList", [ctypes.c_ubyte, ctypes.POINTER(CK_SLOT_ID), ctypes.POINTER(CK_ULONG)]),
    ("C_GetSlotInfo", [CK_SLOT_ID, ctypes.c_void_p]),
    ("C_GetTokenInfo", [CK_SLOT_ID, ctypes.POINTER(_TokenInfo)]),
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


class _FunctionList(ctypes.Structure):
    _fields_ = [("version", _Version)] + [(name, ctypes.c_void_p) for name, _ in _FUNCTIONS]


class ProbeError(Exception):
    """A PKCS#11 call failed inside the probe."""


class Module:
    """Just enough of a PKCS#11 module, through its function list."""

    def __init__(self, path: str):
        self.path = path
        self._dll = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
        get_list = self._dll.C_GetFunctionList
        get_list.restype = CK_RV
        get_list.argtypes = [ctypes.POINTER(ctypes.POINTER(_FunctionList))]
        table = ctypes.POINTER(_FunctionList)()
        self._check("C_GetFunctionList", get_list(ctypes.byref(table)))
        self._fn: dict[str, Any] = {}
        for name, argtypes in _FUNCTIONS:
            proto = ctypes.CFUNCTYPE(CK_RV, *argtypes)
            self._fn[name] = proto(getattr(table.contents, name))

    def _check(self, name: str, rv: int) -> None:
        if rv != 0:
            # in ckr_name's form for a number; the parent names it from hacli's
            # table of return codes (this process has the standard library only)
            raise ProbeError(f"{name} failed: CKR_0x{rv:08X} ({self.path})")

    def call(self, name: str, *args: Any) -> None:
        self._check(name, self._fn[name](*args))

    def slots(self, token_present: bool = True) -> list[int]:
        count = CK_ULONG(0)
        self.call("C_GetSlotList", int(token_present), None, ctypes.byref(count))
        ids = (CK_SLOT_ID * max(count.value, 1))()
        self.call("C_GetSlotList", int(token_present), ids, ctypes.byref(count))
        return list(ids[: count.value])

    def token_info(self, slot: int) -> _TokenInfo:
        info = _TokenInfo()
        self.call("C_GetTokenInfo", slot, ctypes.byref(info))
        return info

    def mechanisms(self, slot: int) -> list[int]:
        count = CK_ULONG(0)
        self.call("C_GetMechanismList", slot, None, ctypes.byref(count))
        types = (CK_ULONG * max(count.value, 1))()
        self.call("C_GetMechanismList", slot, types, ctypes.byref(count))
        return list(types[: count.value])


def _text(field: bytes) -> str:
    return field.decode("utf-8", errors="replace").rstrip(" \0")


def _tokens(mod: Module, wanted: list[int] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for slot in mod.slots(True):
        info = mod.token_info(slot)
        if info.flags & CKF_TOKEN_INITIALIZED:
            token: dict[str, Any] = {"label": _text(info.label), "serial": _text(info.serialNumber)}
            if wanted is not None:
                listed = set(mod.mechanisms(slot))
                token["missing"] = [m for m in wanted if m not in listed]
            out.append(token)
    return out


def _init(req: dict[str, Any]) -> dict[str, Any]:
    mod = Module(req["library"])
    mod.call("C_Initialize", None)
    pin = req["pin"].encode()
    so_pin = req["so_pin"].encode()
    made = []
    try:
        for label in req["labels"]:
            free = [
                s for s in mod.slots(True) if not mod.token_info(s).flags & CKF_TOKEN_INITIALIZED
            ]
            if not free:
                raise ProbeError("SoftHSM2 offers no free slot")
            raw_label = label.encode().ljust(32, b" ")
            mod.call("C_InitToken", free[0], so_pin, len(so_pin), raw_label)
            # SoftHSM2 moves an initialised token to a new slot id derived from
            # its serial: look it up again by label.
            slot = next(s for s in mod.slots(True) if _text(mod.token_info(s).label) == label)
            session = CK_SESSION_HANDLE(0)
            mod.call(
                "C_OpenSession",
                slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                None,
                None,
                ctypes.byref(session),
            )
            try:
                mod.call("C_Login", session, CKU_SO, so_pin, len(so_pin))
                mod.call("C_InitPIN", session, pin, len(pin))
                mod.call("C_Logout", session)
            finally:
                mod.call("C_CloseSession", session)
            made.append({"label": label, "serial": _text(mod.token_info(slot).serialNumber)})
    finally:
        mod.call("C_Finalize", None)
    return {"tokens": made}


def _list(req: dict[str, Any]) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="hacli-probe-")
    try:
        results = []
        for i, spec in enumerate(req["modules"]):
            os.environ.update(spec.get("env", {}))
            # A real copy: the loader would hand back the already loaded instance
            # (with its old address) for the same path or a symlink to it.
            copy = os.path.join(tmp, f"m{i}-{os.path.basename(spec['library'])}")
            shutil.copyfile(spec["library"], copy)
            mod = Module(copy)
            mod.call("C_Initialize", None)
            try:
                results.append(_tokens(mod, req.get("mechanisms")))
            finally:
                mod.call("C_Finalize", None)
        return {"results": results}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    """Entry point of ``python -m hacli.lab.probe``."""
    try:
        req = json.loads(sys.stdin.read())
        answer = {"init": _init, "list": _list}[req["op"]](req)
    except ProbeError as exc:
        answer = {"error": str(exc)}
    except Exception as exc:  # the parent turns this into one LabError line
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer))
    return 0 if "error" not in answer else 1


if __name__ == "__main__":
    sys.exit(main())
