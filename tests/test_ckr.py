"""The CKR table (hacli.engine.ckr): one record per return code, the derived
tables, the python-pkcs11 mapping and CKRError's view of it. No PKCS#11."""

from __future__ import annotations

import inspect
import json
import pickle

import pkcs11.exceptions as px
import pytest

from hacli.engine import CKR, CKR_CODES, CKR_NAMES, CKRError, CKRKind, ckr_name, ckr_value
from hacli.engine.ckr import (
    MEMBER_FAILURE_CODES,
    SUSPECT_CODES,
    UNKNOWN_EXPLANATION,
    explain,
    is_member_failure,
    is_suspect,
)


def test_member_is_its_name() -> None:
    for c in CKR:
        assert c.value == f"CKR_{c.name}" == str(c) == f"{c}"
        assert c == c.value and hash(c) == hash(c.value)
        assert CKR.get(c.value) is c and CKR.from_rv(c.rv) is c
    assert json.dumps({"s": CKR.OK}) == '{"s": "CKR_OK"}'
    assert json.dumps([CKR.DEVICE_ERROR], indent=1) == '[\n "CKR_DEVICE_ERROR"\n]'
    assert pickle.loads(pickle.dumps(CKR.PIN_LOCKED)) is CKR.PIN_LOCKED
    assert "CKR_DEVICE_ERROR" in {CKR.DEVICE_ERROR} and CKR.get("CKR_NOPE") is None
    assert CKR.from_rv(0x7FFF) is None


def test_record_fields() -> None:
    assert (CKR.DEVICE_ERROR.rv, CKR.DEVICE_ERROR.exception) == (0x30, px.DeviceError)
    assert CKR.VENDOR_DEFINED.rv == 0x80000000
    assert len({c.rv for c in CKR}) == len(CKR)
    for c in CKR:
        assert c.explanation and "\n" not in c.explanation and len(c.explanation) < 80, c
        assert isinstance(c.kind, CKRKind)
        assert (c.kind is CKRKind.OK) == (c is CKR.OK)
        assert not (c.suspect and c.member_failure), c
        if c.pkcs11_message is not None:
            assert c.exception is px.PKCS11Error and c.pkcs11_message == c.pkcs11_message.lower()
    assert CKR.OK.exception is None
    assert str(CKRKind.MEMBER_FAILURE) == "member-failure"
    assert str(CKRKind.REQUEST_ERROR) == "request-error"


def test_kinds_are_the_failover_rule() -> None:
    # the eight codes that mark a member down, and the four suspects: spelled
    # out, so that a change to the table's kinds is a visible decision
    down = {"CKR_DEVICE_ERROR", "CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT",
            "CKR_TOKEN_NOT_RECOGNIZED", "CKR_SESSION_HANDLE_INVALID", "CKR_SESSION_CLOSED",
            "CKR_CRYPTOKI_NOT_INITIALIZED", "CKR_SLOT_ID_INVALID"}
    assert down == MEMBER_FAILURE_CODES
    assert {c for c in CKR if c.kind is CKRKind.MEMBER_FAILURE} == down
    suspects = {"CKR_GENERAL_ERROR", "CKR_DEVICE_MEMORY", "CKR_KEY_HANDLE_INVALID",
                "CKR_OBJECT_HANDLE_INVALID"}
    assert suspects == SUSPECT_CODES
    assert {CKR.GENERAL_ERROR, CKR.DEVICE_MEMORY, CKR.KEY_HANDLE_INVALID,
            CKR.OBJECT_HANDLE_INVALID} == {c for c in CKR if c.suspect}
    assert all(CKR(c).kind is CKRKind.REQUEST_ERROR for c in suspects)


def test_derived_tables() -> None:
    assert CKR_CODES["CKR_DEVICE_ERROR"] == 0x30 and CKR_NAMES[0x30] == "CKR_DEVICE_ERROR"
    assert len(CKR_CODES) == len(CKR_NAMES) == len(CKR)
    assert ckr_value("CKR_PIN_INCORRECT") == 0xA0
    with pytest.raises(KeyError):
        ckr_value("CKR_NOPE")


def test_every_pkcs11_exception_class_has_its_code() -> None:
    classes = [o for o in vars(px).values()
               if inspect.isclass(o) and issubclass(o, px.PKCS11Error) and o is not px.PKCS11Error]
    aliases = {px.NoSuchKey: CKR.KEY_HANDLE_INVALID, px.NoSuchToken: CKR.TOKEN_NOT_PRESENT,
               px.MultipleObjectsReturned: CKR.ARGUMENTS_BAD,
               px.MultipleTokensReturned: CKR.ARGUMENTS_BAD}
    for klass in classes:
        code = ckr_name(klass())
        assert isinstance(code, CKR), klass
        assert code is aliases.get(klass) or code.exception is klass, (klass, code)
    # these three used to come out as CKR_FUNCTION_FAILED
    assert ckr_name(px.WrappingKeyHandleInvalid()) == "CKR_WRAPPING_KEY_HANDLE_INVALID"
    assert ckr_name(px.WrappingKeySizeRange()) == "CKR_WRAPPING_KEY_SIZE_RANGE"
    assert ckr_name(px.WrappingKeyTypeInconsistent()) == "CKR_WRAPPING_KEY_TYPE_INCONSISTENT"


@pytest.mark.parametrize(("message", "name"), [
    # python-pkcs11 0.10's texts for the codes it has no class for
    ("Buffer was too small. Should never see this.", "CKR_BUFFER_TOO_SMALL"),
    ("Initialisation error (not initialized). Should never see this.",
     "CKR_CRYPTOKI_NOT_INITIALIZED"),
    ("Initialisation error (already initialized). Should never see this.",
     "CKR_CRYPTOKI_ALREADY_INITIALIZED"),
    ("Parallel not supported. Should never see this.", "CKR_SESSION_PARALLEL_NOT_SUPPORTED"),
    ("User type invalid. Should never see this.", "CKR_USER_TYPE_INVALID"),
    ("Failed to cancel operation", "CKR_OPERATION_CANCEL_FAILED"),
    ("Unmapped error code 0x1", "CKR_CANCEL"),
    ("Unmapped error code 0x00000068", "CKR_KEY_FUNCTION_NOT_PERMITTED"),
    ("Unmapped error code 0x7ff", "CKR_0x000007FF"),
    ("OS exception while loading x.so: gone", "CKR_FUNCTION_FAILED"),
])
def test_bare_pkcs11_error_messages(message: str, name: str) -> None:
    assert ckr_name(px.PKCS11Error(message)) == name


def test_classification_follows_the_kind() -> None:
    for c in CKR:
        if c.exception is None or c.exception is px.PKCS11Error:
            continue
        e = c.exception()
        assert is_member_failure(e) == c.member_failure, c
        assert is_suspect(e) == c.suspect, c
        err = CKRError(c, "op")
        assert is_member_failure(err) == c.member_failure and is_suspect(err) == c.suspect
    not_initialized = px.PKCS11Error("Initialisation error (not initialized). Should never see.")
    assert is_member_failure(not_initialized)


def test_names_and_explanations() -> None:
    assert ckr_name("CKR_PIN_LOCKED") is CKR.PIN_LOCKED
    assert ckr_name("pin_locked") is CKR.PIN_LOCKED
    assert ckr_name("CKR_SOMETHING_NEW") == "CKR_SOMETHING_NEW"
    assert ckr_name(0x80000000) is CKR.VENDOR_DEFINED
    assert ckr_name(0x80000001) == "CKR_0x80000001"
    assert explain("CKR_OK") == "Doing great, no errors"
    assert explain(CKR.PIN_INCORRECT) == "the PIN is wrong"
    assert explain("CKR_0x80000001") == UNKNOWN_EXPLANATION == "see the PKCS#11 specification"


def test_ckr_error_keeps_the_name() -> None:
    err = CKRError("CKR_MECHANISM_INVALID", "C_Sign", "m1", "no such thing")
    assert err.ckr == "CKR_MECHANISM_INVALID" and err.ckr is CKR.MECHANISM_INVALID
    assert err.code is CKR.MECHANISM_INVALID and err.rv == 0x70
    assert str(err) == "C_Sign: CKR_MECHANISM_INVALID (member m1) - no such thing"
    assert str(CKRError(CKR.OPERATION_ACTIVE)) == "CKR_OPERATION_ACTIVE"
    odd = CKRError("CKR_0x00000123", "C_Sign")
    assert (odd.ckr, odd.code, odd.rv, str(odd)) == ("CKR_0x00000123", None, -1,
                                                     "C_Sign: CKR_0x00000123")


def test_lab_probe_codes_are_named_by_the_table() -> None:
    # the probe runs with the standard library only: it writes numbers, the
    # parent names them
    from hacli.lab import probe
    from hacli.lab.tokens import name_codes

    module = object.__new__(probe.Module)
    module.path = "/x/libsofthsm2.so"
    with pytest.raises(probe.ProbeError) as exc:
        module._check("C_InitToken", 0xA0)
    assert str(exc.value) == "C_InitToken failed: CKR_0x000000A0 (/x/libsofthsm2.so)"
    assert name_codes(str(exc.value)) == \
        "C_InitToken failed: CKR_PIN_INCORRECT (/x/libsofthsm2.so)"
    assert name_codes("C_Login failed: CKR_0x00000777 (m)") == "C_Login failed: CKR_0x00000777 (m)"
    assert name_codes("SoftHSM2 offers no free slot") == "SoftHSM2 offers no free slot"


def test_no_code_names_as_string_literals_outside_the_table() -> None:
    # code names come from CKR, so a misspelt one fails at import, not silently
    # in a comparison; the table itself and the names of exported tables are
    # the exceptions
    import re
    from pathlib import Path

    import hacli

    root = Path(hacli.__file__).parent
    found = {f"{p.relative_to(root)}: {m}"
             for p in root.rglob("*.py") if p.name != "ckr.py" or p.parent.name != "engine"
             for m in re.findall(r'"CKR_\w*', p.read_text())}
    assert found == {'engine/__init__.py: "CKR_CODES', 'engine/__init__.py: "CKR_NAMES'}
