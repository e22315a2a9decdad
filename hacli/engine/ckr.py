"""PKCS#11 return codes (``CKR_*``): names, values, and python-pkcs11 exceptions.

python-pkcs11 raises one exception class per return code but its exceptions
carry no message (``str(e) == ""``), so the engine and the CLI name errors with
this table: :func:`ckr_name` turns an exception (or a numeric code) into the
``CKR_*`` name an HSM administrator expects to read.

:func:`is_member_failure` is the one place that decides whether an error means
"this member is gone" (fail over, mark it down) or "the request is wrong" (give
it back to the caller, the member stays in service).
"""

from __future__ import annotations

import re

import pkcs11.exceptions as px

#: CKR name -> numeric value (PKCS#11 v3.0 plus the codes python-pkcs11 knows).
CKR_CODES: dict[str, int] = {
    "CKR_OK": 0x000,
    "CKR_CANCEL": 0x001,
    "CKR_HOST_MEMORY": 0x002,
    "CKR_SLOT_ID_INVALID": 0x003,
    "CKR_GENERAL_ERROR": 0x005,
    "CKR_FUNCTION_FAILED": 0x006,
    "CKR_ARGUMENTS_BAD": 0x007,
    "CKR_NO_EVENT": 0x008,
    "CKR_NEED_TO_CREATE_THREADS": 0x009,
    "CKR_CANT_LOCK": 0x00A,
    "CKR_ATTRIBUTE_READ_ONLY": 0x010,
    "CKR_ATTRIBUTE_SENSITIVE": 0x011,
    "CKR_ATTRIBUTE_TYPE_INVALID": 0x012,
    "CKR_ATTRIBUTE_VALUE_INVALID": 0x013,
    "CKR_ACTION_PROHIBITED": 0x01B,
    "CKR_DATA_INVALID": 0x020,
    "CKR_DATA_LEN_RANGE": 0x021,
    "CKR_DEVICE_ERROR": 0x030,
    "CKR_DEVICE_MEMORY": 0x031,
    "CKR_DEVICE_REMOVED": 0x032,
    "CKR_ENCRYPTED_DATA_INVALID": 0x040,
    "CKR_ENCRYPTED_DATA_LEN_RANGE": 0x041,
    "CKR_FUNCTION_CANCELED": 0x050,
    "CKR_FUNCTION_NOT_PARALLEL": 0x051,
    "CKR_FUNCTION_NOT_SUPPORTED": 0x054,
    "CKR_KEY_HANDLE_INVALID": 0x060,
    "CKR_KEY_SIZE_RANGE": 0x062,
    "CKR_KEY_TYPE_INCONSISTENT": 0x063,
    "CKR_KEY_NOT_NEEDED": 0x064,
    "CKR_KEY_CHANGED": 0x065,
    "CKR_KEY_NEEDED": 0x066,
    "CKR_KEY_INDIGESTIBLE": 0x067,
    "CKR_KEY_FUNCTION_NOT_PERMITTED": 0x068,
    "CKR_KEY_NOT_WRAPPABLE": 0x069,
    "CKR_KEY_UNEXTRACTABLE": 0x06A,
    "CKR_MECHANISM_INVALID": 0x070,
    "CKR_MECHANISM_PARAM_INVALID": 0x071,
    "CKR_OBJECT_HANDLE_INVALID": 0x082,
    "CKR_OPERATION_ACTIVE": 0x090,
    "CKR_OPERATION_NOT_INITIALIZED": 0x091,
    "CKR_PIN_INCORRECT": 0x0A0,
    "CKR_PIN_INVALID": 0x0A1,
    "CKR_PIN_LEN_RANGE": 0x0A2,
    "CKR_PIN_EXPIRED": 0x0A3,
    "CKR_PIN_LOCKED": 0x0A4,
    "CKR_SESSION_CLOSED": 0x0B0,
    "CKR_SESSION_COUNT": 0x0B1,
    "CKR_SESSION_HANDLE_INVALID": 0x0B3,
    "CKR_SESSION_PARALLEL_NOT_SUPPORTED": 0x0B4,
    "CKR_SESSION_READ_ONLY": 0x0B5,
    "CKR_SESSION_EXISTS": 0x0B6,
    "CKR_SESSION_READ_ONLY_EXISTS": 0x0B7,
    "CKR_SESSION_READ_WRITE_SO_EXISTS": 0x0B8,
    "CKR_SIGNATURE_INVALID": 0x0C0,
    "CKR_SIGNATURE_LEN_RANGE": 0x0C1,
    "CKR_TEMPLATE_INCOMPLETE": 0x0D0,
    "CKR_TEMPLATE_INCONSISTENT": 0x0D1,
    "CKR_TOKEN_NOT_PRESENT": 0x0E0,
    "CKR_TOKEN_NOT_RECOGNIZED": 0x0E1,
    "CKR_TOKEN_WRITE_PROTECTED": 0x0E2,
    "CKR_UNWRAPPING_KEY_HANDLE_INVALID": 0x0F0,
    "CKR_UNWRAPPING_KEY_SIZE_RANGE": 0x0F1,
    "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT": 0x0F2,
    "CKR_USER_ALREADY_LOGGED_IN": 0x100,
    "CKR_USER_NOT_LOGGED_IN": 0x101,
    "CKR_USER_PIN_NOT_INITIALIZED": 0x102,
    "CKR_USER_TYPE_INVALID": 0x103,
    "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": 0x104,
    "CKR_USER_TOO_MANY_TYPES": 0x105,
    "CKR_WRAPPED_KEY_INVALID": 0x110,
    "CKR_WRAPPED_KEY_LEN_RANGE": 0x112,
    "CKR_WRAPPING_KEY_HANDLE_INVALID": 0x113,
    "CKR_WRAPPING_KEY_SIZE_RANGE": 0x114,
    "CKR_WRAPPING_KEY_TYPE_INCONSISTENT": 0x115,
    "CKR_RANDOM_SEED_NOT_SUPPORTED": 0x120,
    "CKR_RANDOM_NO_RNG": 0x121,
    "CKR_DOMAIN_PARAMS_INVALID": 0x130,
    "CKR_CURVE_NOT_SUPPORTED": 0x140,
    "CKR_BUFFER_TOO_SMALL": 0x150,
    "CKR_SAVED_STATE_INVALID": 0x160,
    "CKR_INFORMATION_SENSITIVE": 0x170,
    "CKR_STATE_UNSAVEABLE": 0x180,
    "CKR_CRYPTOKI_NOT_INITIALIZED": 0x190,
    "CKR_CRYPTOKI_ALREADY_INITIALIZED": 0x191,
    "CKR_MUTEX_BAD": 0x1A0,
    "CKR_MUTEX_NOT_LOCKED": 0x1A1,
    "CKR_NEW_PIN_MODE": 0x1B0,
    "CKR_NEXT_OTP": 0x1B1,
    "CKR_EXCEEDED_MAX_ITERATIONS": 0x1B5,
    "CKR_FIPS_SELF_TEST_FAILED": 0x1B6,
    "CKR_LIBRARY_LOAD_FAILED": 0x1B7,
    "CKR_PIN_TOO_WEAK": 0x1B8,
    "CKR_PUBLIC_KEY_INVALID": 0x1B9,
    "CKR_FUNCTION_REJECTED": 0x200,
    "CKR_OPERATION_CANCEL_FAILED": 0x202,
    "CKR_VENDOR_DEFINED": 0x80000000,
}

#: numeric value -> CKR name.
CKR_NAMES: dict[int, str] = {v: k for k, v in CKR_CODES.items()}

#: python-pkcs11 exception class name -> CKR name.  Classes that python-pkcs11
#: raises for conditions that are not return codes (NoSuchKey, ...) map to the
#: code an application would have seen from the equivalent raw call.
_EXCEPTION_CKR: dict[str, str] = {
    "AnotherUserAlreadyLoggedIn": "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    "AttributeTypeInvalid": "CKR_ATTRIBUTE_TYPE_INVALID",
    "AttributeValueInvalid": "CKR_ATTRIBUTE_VALUE_INVALID",
    "AttributeReadOnly": "CKR_ATTRIBUTE_READ_ONLY",
    "AttributeSensitive": "CKR_ATTRIBUTE_SENSITIVE",
    "ArgumentsBad": "CKR_ARGUMENTS_BAD",
    "DataInvalid": "CKR_DATA_INVALID",
    "DataLenRange": "CKR_DATA_LEN_RANGE",
    "DomainParamsInvalid": "CKR_DOMAIN_PARAMS_INVALID",
    "DeviceError": "CKR_DEVICE_ERROR",
    "DeviceMemory": "CKR_DEVICE_MEMORY",
    "DeviceRemoved": "CKR_DEVICE_REMOVED",
    "EncryptedDataInvalid": "CKR_ENCRYPTED_DATA_INVALID",
    "EncryptedDataLenRange": "CKR_ENCRYPTED_DATA_LEN_RANGE",
    "ExceededMaxIterations": "CKR_EXCEEDED_MAX_ITERATIONS",
    "FunctionCancelled": "CKR_FUNCTION_CANCELED",
    "FunctionFailed": "CKR_FUNCTION_FAILED",
    "FunctionRejected": "CKR_FUNCTION_REJECTED",
    "FunctionNotSupported": "CKR_FUNCTION_NOT_SUPPORTED",
    "KeyHandleInvalid": "CKR_KEY_HANDLE_INVALID",
    "KeyIndigestible": "CKR_KEY_INDIGESTIBLE",
    "KeyNeeded": "CKR_KEY_NEEDED",
    "KeyNotNeeded": "CKR_KEY_NOT_NEEDED",
    "KeyNotWrappable": "CKR_KEY_NOT_WRAPPABLE",
    "KeySizeRange": "CKR_KEY_SIZE_RANGE",
    "KeyTypeInconsistent": "CKR_KEY_TYPE_INCONSISTENT",
    "KeyUnextractable": "CKR_KEY_UNEXTRACTABLE",
    "GeneralError": "CKR_GENERAL_ERROR",
    "HostMemory": "CKR_HOST_MEMORY",
    "MechanismInvalid": "CKR_MECHANISM_INVALID",
    "MechanismParamInvalid": "CKR_MECHANISM_PARAM_INVALID",
    "MultipleObjectsReturned": "CKR_ARGUMENTS_BAD",
    "MultipleTokensReturned": "CKR_ARGUMENTS_BAD",
    "NoEvent": "CKR_NO_EVENT",
    "NoSuchKey": "CKR_KEY_HANDLE_INVALID",
    "NoSuchToken": "CKR_TOKEN_NOT_PRESENT",
    "ObjectHandleInvalid": "CKR_OBJECT_HANDLE_INVALID",
    "OperationActive": "CKR_OPERATION_ACTIVE",
    "OperationNotInitialized": "CKR_OPERATION_NOT_INITIALIZED",
    "PinExpired": "CKR_PIN_EXPIRED",
    "PinIncorrect": "CKR_PIN_INCORRECT",
    "PinInvalid": "CKR_PIN_INVALID",
    "PinLenRange": "CKR_PIN_LEN_RANGE",
    "PinLocked": "CKR_PIN_LOCKED",
    "PinTooWeak": "CKR_PIN_TOO_WEAK",
    "PublicKeyInvalid": "CKR_PUBLIC_KEY_INVALID",
    "RandomNoRNG": "CKR_RANDOM_NO_RNG",
    "RandomSeedNotSupported": "CKR_RANDOM_SEED_NOT_SUPPORTED",
    "SessionClosed": "CKR_SESSION_CLOSED",
    "SessionCount": "CKR_SESSION_COUNT",
    "SessionExists": "CKR_SESSION_EXISTS",
    "SessionHandleInvalid": "CKR_SESSION_HANDLE_INVALID",
    "SessionReadOnly": "CKR_SESSION_READ_ONLY",
    "SessionReadOnlyExists": "CKR_SESSION_READ_ONLY_EXISTS",
    "SessionReadWriteSOExists": "CKR_SESSION_READ_WRITE_SO_EXISTS",
    "SignatureLenRange": "CKR_SIGNATURE_LEN_RANGE",
    "SignatureInvalid": "CKR_SIGNATURE_INVALID",
    "SlotIDInvalid": "CKR_SLOT_ID_INVALID",
    "TemplateIncomplete": "CKR_TEMPLATE_INCOMPLETE",
    "TemplateInconsistent": "CKR_TEMPLATE_INCONSISTENT",
    "TokenNotPresent": "CKR_TOKEN_NOT_PRESENT",
    "TokenNotRecognised": "CKR_TOKEN_NOT_RECOGNIZED",
    "TokenWriteProtected": "CKR_TOKEN_WRITE_PROTECTED",
    "UnwrappingKeyHandleInvalid": "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    "UnwrappingKeySizeRange": "CKR_UNWRAPPING_KEY_SIZE_RANGE",
    "UnwrappingKeyTypeInconsistent": "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    "UserAlreadyLoggedIn": "CKR_USER_ALREADY_LOGGED_IN",
    "UserNotLoggedIn": "CKR_USER_NOT_LOGGED_IN",
    "UserPinNotInitialized": "CKR_USER_PIN_NOT_INITIALIZED",
    "UserTooManyTypes": "CKR_USER_TOO_MANY_TYPES",
    "WrappedKeyInvalid": "CKR_WRAPPED_KEY_INVALID",
    "WrappedKeyLenRange": "CKR_WRAPPED_KEY_LEN_RANGE",
    "AlreadyInitialized": "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}

#: Codes that mean the member's transport is gone (device, its connection, or
#: our sessions on it).  Only these mark a member down by themselves.
MEMBER_FAILURE_CODES: frozenset[str] = frozenset(
    {
        "CKR_DEVICE_ERROR",
        "CKR_DEVICE_REMOVED",
        "CKR_TOKEN_NOT_PRESENT",
        "CKR_TOKEN_NOT_RECOGNIZED",
        "CKR_SESSION_HANDLE_INVALID",
        "CKR_SESSION_CLOSED",
        "CKR_CRYPTOKI_NOT_INITIALIZED",
        "CKR_SLOT_ID_INVALID",
    }
)

#: Codes a healthy token also gives to a wrong request: SoftHSM2 behind p11-kit
#: 0.25 answers ``CKR_GENERAL_ERROR`` to e.g. signing with an AES key under
#: ``CKM_SHA256_RSA_PKCS``.  Such an error is the request's until the same call
#: succeeds on another member: only then was the first member sick.
SUSPECT_CODES: frozenset[str] = frozenset({"CKR_GENERAL_ERROR", "CKR_DEVICE_MEMORY"})

_UNMAPPED_RE = re.compile(r"0x([0-9a-fA-F]+)")


def ckr_name(error: BaseException | int | str | None) -> str:
    """Return the ``CKR_*`` name for an exception, a numeric code, or a name.

    ``None`` gives ``CKR_OK``.  Engine errors carrying a code (``.ckr``) give it;
    python-pkcs11 exceptions are mapped by class; a bare ``PKCS11Error`` with an
    "Unmapped error code 0x..." message is decoded; a timeout is
    ``CKR_DEVICE_ERROR``; anything else is ``CKR_GENERAL_ERROR``.
    """
    if error is None:
        return "CKR_OK"
    if isinstance(error, str):
        return error if error.startswith("CKR_") else f"CKR_{error.upper()}"
    if isinstance(error, int):
        return CKR_NAMES.get(error, f"CKR_0x{error:08X}")
    ckr = getattr(error, "ckr", None)
    if isinstance(ckr, str):
        return ckr
    for klass in type(error).__mro__:
        name = _EXCEPTION_CKR.get(klass.__name__)
        if name and klass.__module__.startswith("pkcs11"):
            return name
    if isinstance(error, px.PKCS11Error):
        text = str(error)
        low = text.lower()
        if "not initialized" in low:
            return "CKR_CRYPTOKI_NOT_INITIALIZED"
        if "buffer was too small" in low:
            return "CKR_BUFFER_TOO_SMALL"
        m = _UNMAPPED_RE.search(text)
        if m:
            return ckr_name(int(m.group(1), 16))
        # python-pkcs11 raising its base class for a non-code condition: a
        # request problem, never evidence that the member is gone
        return "CKR_FUNCTION_FAILED"
    if isinstance(error, TimeoutError | OSError | ConnectionError):
        return "CKR_DEVICE_ERROR"
    return "CKR_GENERAL_ERROR"


def ckr_value(name: str) -> int:
    """Numeric value of a ``CKR_*`` name (KeyError if unknown)."""
    return CKR_CODES[name]


def is_member_failure(error: BaseException) -> bool:
    """True when ``error`` means the member's transport is gone.

    Loading problems (an ``OSError``/``PKCS11Error`` while loading a module),
    connection losses and timeouts count as member failures.  A request error
    never does, and neither does a *suspect* code (:func:`is_suspect`) on its own.
    """
    if isinstance(error, TimeoutError | ConnectionError | OSError):
        return True
    if not isinstance(error, px.PKCS11Error) and not hasattr(error, "ckr"):
        return False  # a Python error (bad argument, bug): never the member's fault
    return ckr_name(error) in MEMBER_FAILURE_CODES


def is_suspect(error: BaseException) -> bool:
    """True for an error that is a request error unless another member serves the
    same call (:data:`SUSPECT_CODES`); the caller asks a second member to decide."""
    if not isinstance(error, px.PKCS11Error) and not hasattr(error, "ckr"):
        return False
    return ckr_name(error) in SUSPECT_CODES


__all__ = [
    "CKR_CODES",
    "CKR_NAMES",
    "MEMBER_FAILURE_CODES",
    "SUSPECT_CODES",
    "ckr_name",
    "ckr_value",
    "is_member_failure",
    "is_suspect",
]
