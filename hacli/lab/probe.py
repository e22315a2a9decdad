"""A tiny PKCS#11 helper the lab runs in a *separate* Python process.

Why a separate process:

* ``SOFTHSM2_CONF`` must be set for SoftHSM2 only, never in the caller's
  environment (the caller may itself be an application with its own SoftHSM).
* ``p11-kit-client.so`` reads ``P11_KIT_SERVER_ADDRESS`` when it is loaded, and
  a module stays loaded for the life of a process: checking N members needs N
  copies loaded with N addresses, which must not pollute the caller.
* A hung member blocks any call into it; a child process can be killed.

Why ctypes and not python-pkcs11: python-pkcs11 0.10 has no ``C_InitToken``,
which creating a token needs, and the rest is four calls.  The ctypes side is
:mod:`hacli.p11raw` (standard library only, like this process), which the
engine's Init Token uses too.

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
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # run as a script (``python -I probe.py``): hacli's own tree, not whatever
    # the environment would have found, gives the ctypes module below
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hacli.p11raw import (
    CK_SESSION_HANDLE,
    CKF_RW_SESSION,
    CKF_SERIAL_SESSION,
    CKF_TOKEN_INITIALIZED,
    CKU_SO,
    Module,
    P11CallError,
    label_field,
    text,
)

#: A probe's failure: a PKCS#11 call's (with its ``CKR_0x%08X``) or its own.
ProbeError = P11CallError


def _tokens(mod: Module, wanted: list[int] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for slot in mod.slots(True):
        info = mod.token_info(slot)
        if info.flags & CKF_TOKEN_INITIALIZED:
            token: dict[str, Any] = {"label": text(info.label), "serial": text(info.serialNumber)}
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
            mod.call("C_InitToken", free[0], so_pin, len(so_pin), label_field(label))
            # SoftHSM2 moves an initialised token to a new slot id derived from
            # its serial: look it up again by label.
            slot = next(s for s in mod.slots(True) if text(mod.token_info(s).label) == label)
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
            made.append({"label": label, "serial": text(mod.token_info(slot).serialNumber)})
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
