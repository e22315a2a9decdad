"""PKCS#11 return codes (``CKR_*``): the one table hacli has of them.

Every code is one member of :class:`CKR`, a ``str`` enum whose value *is* the
``CKR_*`` name (``CKR.DEVICE_ERROR == "CKR_DEVICE_ERROR"``), so a member can go
wherever a name went before: into messages, JSON, the HA log, comparisons with
plain strings.  Each member is also the code's record:

* :attr:`CKR.rv` - the numeric value (``0x30``);
* :attr:`CKR.exception` - the python-pkcs11 exception class raised for it, and
  :attr:`CKR.pkcs11_message` - the words that identify it when python-pkcs11
  raises its bare ``PKCS11Error`` instead of a class of its own;
* :attr:`CKR.kind` - :class:`CKRKind`: a *member failure* (the member is gone:
  fail over, mark it down) or a *request error* (the request is wrong: give it
  back to the caller, the member stays); :attr:`CKR.suspect` marks the request
  errors that healthy tokens and sick ones both give (:func:`is_suspect`);
* :attr:`CKR.explanation` - one line an HSM administrator understands, for the
  CLI's error lines and the menu's status line (:func:`explain`).

python-pkcs11 exceptions carry no message (``str(e) == ""``), so
:func:`ckr_name` turns an exception (or a number) into the code, and
:func:`is_member_failure` is the one place that decides failover.  The older
tables (:data:`CKR_CODES`, :data:`CKR_NAMES`, :data:`MEMBER_FAILURE_CODES`,
:data:`SUSPECT_CODES`) are derived from :class:`CKR` and stay for callers.
"""

from __future__ import annotations

import enum
import re

import pkcs11.exceptions as px


class CKRKind(enum.StrEnum):
    """What a return code says about the member that gave it."""

    #: ``CKR_OK`` only: nothing went wrong.
    OK = "ok"
    #: The member's transport is gone (device, its connection, our sessions on
    #: it): the call fails over and the member is marked down.
    MEMBER_FAILURE = "member-failure"
    #: The request is wrong (or the token refuses it): the caller gets the
    #: error and the member stays in service.
    REQUEST_ERROR = "request-error"


# short aliases, so that each row of the table stays on one or two lines
_OK = CKRKind.OK
_DOWN = CKRKind.MEMBER_FAILURE
_REQ = CKRKind.REQUEST_ERROR
#: python-pkcs11 raises its base class, with a message, for the codes it has no
#: class for (the message tells them apart, see :attr:`CKR.pkcs11_message`).
_BARE = px.PKCS11Error
#: The last field of a suspect code's row (:attr:`CKR.suspect`).
_SUSPECT = True


class CKR(enum.StrEnum):
    """A PKCS#11 return code: its ``CKR_*`` name (the value) and its record.

    The member's *value* and ``str()`` are the ``CKR_*`` name; its Python
    ``.name`` is the identifier without the prefix (``DEVICE_ERROR``).  Look a
    code up with :meth:`get` (by name) or :meth:`from_rv` (by number).
    """

    _value_: str
    #: Numeric value of the code (``CK_RV``).
    rv: int
    #: Member failure or request error (see :class:`CKRKind`).
    kind: CKRKind
    #: One line for an HSM administrator.
    explanation: str
    #: The python-pkcs11 exception class for this code (``PKCS11Error`` itself
    #: when it has none; ``None`` for ``CKR_OK``).
    exception: type[px.PKCS11Error] | None
    #: Lower-case words of python-pkcs11's message when :attr:`exception` is
    #: the bare ``PKCS11Error`` and the message names the code (else ``None``:
    #: python-pkcs11 then says "Unmapped error code 0x...").
    pkcs11_message: str | None
    #: A request error that a sick member gives as well: the request's fault
    #: only once another member gives it too (see :func:`is_suspect`).
    suspect: bool

    def __new__(cls, name: str, rv: int, kind: CKRKind, explanation: str,
                exception: type[px.PKCS11Error] | None = _BARE, pkcs11_message: str | None = None,
                suspect: bool = False) -> CKR:
        member = str.__new__(cls, name)
        member._value_ = name
        member.rv = rv
        member.kind = kind
        member.explanation = explanation
        member.exception = exception
        member.pkcs11_message = pkcs11_message
        member.suspect = suspect
        return member

    @property
    def member_failure(self) -> bool:
        """True when this code means the member is gone (fail over)."""
        return self.kind is CKRKind.MEMBER_FAILURE

    @classmethod
    def get(cls, name: str) -> CKR | None:
        """The code with this ``CKR_*`` name, or None."""
        return _BY_NAME.get(name)

    @classmethod
    def from_rv(cls, rv: int) -> CKR | None:
        """The code with this numeric value, or None."""
        return _BY_RV.get(rv)

    # PKCS#11's codes up to v3.0 (not all: one missing here is named
    # CKR_0x%08X by ckr_name), every one python-pkcs11 knows.  Kinds: only the eight
    # codes that say the device, its connection or our session on it is gone
    # are member failures; everything else is the request's (GENERAL_ERROR,
    # DEVICE_MEMORY and the two handle codes being suspects, see is_suspect).
    OK = "CKR_OK", 0x000, _OK, "Doing great, no errors", None
    CANCEL = ("CKR_CANCEL", 0x001, _REQ,
              "the application's callback cancelled the call")
    HOST_MEMORY = ("CKR_HOST_MEMORY", 0x002, _REQ,
                   "the computer running the application is out of memory", px.HostMemory)
    SLOT_ID_INVALID = ("CKR_SLOT_ID_INVALID", 0x003, _DOWN,
                       "no slot has that number", px.SlotIDInvalid)
    GENERAL_ERROR = ("CKR_GENERAL_ERROR", 0x005, _REQ,
                     "an unrecoverable error occurred", px.GeneralError, None, _SUSPECT)
    FUNCTION_FAILED = ("CKR_FUNCTION_FAILED", 0x006, _REQ,
                       "the HSM could not carry out the function", px.FunctionFailed)
    ARGUMENTS_BAD = ("CKR_ARGUMENTS_BAD", 0x007, _REQ,
                     "an argument to the call was wrong", px.ArgumentsBad)
    NO_EVENT = ("CKR_NO_EVENT", 0x008, _REQ,
                "no slot event happened within the timeout", px.NoEvent)
    NEED_TO_CREATE_THREADS = ("CKR_NEED_TO_CREATE_THREADS", 0x009, _REQ,
                              "the PKCS#11 library needs threads of its own but may not "
                              "create them")
    CANT_LOCK = ("CKR_CANT_LOCK", 0x00A, _REQ,
                 "the PKCS#11 library cannot do the locking it was asked for")
    ATTRIBUTE_READ_ONLY = ("CKR_ATTRIBUTE_READ_ONLY", 0x010, _REQ,
                           "that attribute cannot be set or changed", px.AttributeReadOnly)
    ATTRIBUTE_SENSITIVE = ("CKR_ATTRIBUTE_SENSITIVE", 0x011, _REQ,
                           "that attribute is sensitive and cannot be read",
                           px.AttributeSensitive)
    ATTRIBUTE_TYPE_INVALID = ("CKR_ATTRIBUTE_TYPE_INVALID", 0x012, _REQ,
                              "the token does not know that attribute for this object",
                              px.AttributeTypeInvalid)
    ATTRIBUTE_VALUE_INVALID = ("CKR_ATTRIBUTE_VALUE_INVALID", 0x013, _REQ,
                               "an attribute value is not acceptable", px.AttributeValueInvalid)
    ACTION_PROHIBITED = ("CKR_ACTION_PROHIBITED", 0x01B, _REQ,
                         "the token's policy forbids this action")
    DATA_INVALID = ("CKR_DATA_INVALID", 0x020, _REQ,
                    "the data is not valid for this operation", px.DataInvalid)
    DATA_LEN_RANGE = ("CKR_DATA_LEN_RANGE", 0x021, _REQ,
                      "the data has the wrong length for this operation", px.DataLenRange)
    DEVICE_ERROR = ("CKR_DEVICE_ERROR", 0x030, _DOWN,
                    "the HSM failed or could not be reached", px.DeviceError)
    DEVICE_MEMORY = ("CKR_DEVICE_MEMORY", 0x031, _REQ,
                     "the HSM is out of memory", px.DeviceMemory, None, _SUSPECT)
    DEVICE_REMOVED = ("CKR_DEVICE_REMOVED", 0x032, _DOWN,
                      "the HSM was removed during the call", px.DeviceRemoved)
    ENCRYPTED_DATA_INVALID = ("CKR_ENCRYPTED_DATA_INVALID", 0x040, _REQ,
                              "the ciphertext is not valid", px.EncryptedDataInvalid)
    ENCRYPTED_DATA_LEN_RANGE = ("CKR_ENCRYPTED_DATA_LEN_RANGE", 0x041, _REQ,
                                "the ciphertext has the wrong length", px.EncryptedDataLenRange)
    FUNCTION_CANCELED = ("CKR_FUNCTION_CANCELED", 0x050, _REQ,
                         "the call was cancelled before it finished", px.FunctionCancelled)
    FUNCTION_NOT_PARALLEL = ("CKR_FUNCTION_NOT_PARALLEL", 0x051, _REQ,
                             "no function runs in parallel in this session")
    FUNCTION_NOT_SUPPORTED = ("CKR_FUNCTION_NOT_SUPPORTED", 0x054, _REQ,
                              "this function is not supported here", px.FunctionNotSupported)
    KEY_HANDLE_INVALID = ("CKR_KEY_HANDLE_INVALID", 0x060, _REQ,
                          "no key has that handle", px.KeyHandleInvalid, None, _SUSPECT)
    KEY_SIZE_RANGE = ("CKR_KEY_SIZE_RANGE", 0x062, _REQ,
                      "the key size is outside what the mechanism supports", px.KeySizeRange)
    KEY_TYPE_INCONSISTENT = ("CKR_KEY_TYPE_INCONSISTENT", 0x063, _REQ,
                             "the key type does not fit the mechanism", px.KeyTypeInconsistent)
    KEY_NOT_NEEDED = ("CKR_KEY_NOT_NEEDED", 0x064, _REQ,
                      "a key was given where none is needed", px.KeyNotNeeded)
    KEY_CHANGED = ("CKR_KEY_CHANGED", 0x065, _REQ,
                   "a key given to restore a saved state is not the one used before")
    KEY_NEEDED = ("CKR_KEY_NEEDED", 0x066, _REQ,
                  "restoring a saved state needs a key that was not given", px.KeyNeeded)
    KEY_INDIGESTIBLE = ("CKR_KEY_INDIGESTIBLE", 0x067, _REQ,
                        "the token cannot digest that key's value", px.KeyIndigestible)
    KEY_FUNCTION_NOT_PERMITTED = ("CKR_KEY_FUNCTION_NOT_PERMITTED", 0x068, _REQ,
                                  "the key's attributes do not allow this use")
    KEY_NOT_WRAPPABLE = ("CKR_KEY_NOT_WRAPPABLE", 0x069, _REQ,
                         "the key may not be wrapped (not extractable, or wrap-with-trusted)",
                         px.KeyNotWrappable)
    KEY_UNEXTRACTABLE = ("CKR_KEY_UNEXTRACTABLE", 0x06A, _REQ,
                         "the key is not extractable", px.KeyUnextractable)
    MECHANISM_INVALID = ("CKR_MECHANISM_INVALID", 0x070, _REQ,
                         "the token does not support that mechanism", px.MechanismInvalid)
    MECHANISM_PARAM_INVALID = ("CKR_MECHANISM_PARAM_INVALID", 0x071, _REQ,
                               "the mechanism's parameters are wrong", px.MechanismParamInvalid)
    OBJECT_HANDLE_INVALID = ("CKR_OBJECT_HANDLE_INVALID", 0x082, _REQ,
                             "no object has that handle", px.ObjectHandleInvalid, None,
                             _SUSPECT)
    OPERATION_ACTIVE = ("CKR_OPERATION_ACTIVE", 0x090, _REQ,
                        "another operation is already active in this session",
                        px.OperationActive)
    OPERATION_NOT_INITIALIZED = ("CKR_OPERATION_NOT_INITIALIZED", 0x091, _REQ,
                                 "no operation of that kind was started",
                                 px.OperationNotInitialized)
    PIN_INCORRECT = ("CKR_PIN_INCORRECT", 0x0A0, _REQ,
                     "the PIN is wrong", px.PinIncorrect)
    PIN_INVALID = ("CKR_PIN_INVALID", 0x0A1, _REQ,
                   "the PIN has characters the token does not accept", px.PinInvalid)
    PIN_LEN_RANGE = ("CKR_PIN_LEN_RANGE", 0x0A2, _REQ,
                     "the PIN is too short or too long", px.PinLenRange)
    PIN_EXPIRED = ("CKR_PIN_EXPIRED", 0x0A3, _REQ,
                   "the PIN has expired and must be changed", px.PinExpired)
    PIN_LOCKED = ("CKR_PIN_LOCKED", 0x0A4, _REQ,
                  "the PIN is locked after too many wrong attempts", px.PinLocked)
    SESSION_CLOSED = ("CKR_SESSION_CLOSED", 0x0B0, _DOWN,
                      "the session was closed", px.SessionClosed)
    SESSION_COUNT = ("CKR_SESSION_COUNT", 0x0B1, _REQ,
                     "the token cannot open another session", px.SessionCount)
    SESSION_HANDLE_INVALID = ("CKR_SESSION_HANDLE_INVALID", 0x0B3, _DOWN,
                              "no session has that handle", px.SessionHandleInvalid)
    SESSION_PARALLEL_NOT_SUPPORTED = ("CKR_SESSION_PARALLEL_NOT_SUPPORTED", 0x0B4, _REQ,
                                      "the token does not support parallel sessions",
                                      _BARE, "parallel not supported")
    SESSION_READ_ONLY = ("CKR_SESSION_READ_ONLY", 0x0B5, _REQ,
                         "the session is read-only", px.SessionReadOnly)
    SESSION_EXISTS = ("CKR_SESSION_EXISTS", 0x0B6, _REQ,
                      "a session is open, so the token cannot be initialised", px.SessionExists)
    SESSION_READ_ONLY_EXISTS = ("CKR_SESSION_READ_ONLY_EXISTS", 0x0B7, _REQ,
                                "a read-only session is open, so the SO cannot log in",
                                px.SessionReadOnlyExists)
    SESSION_READ_WRITE_SO_EXISTS = ("CKR_SESSION_READ_WRITE_SO_EXISTS", 0x0B8, _REQ,
                                    "the SO is logged in, so no read-only session can be opened",
                                    px.SessionReadWriteSOExists)
    SIGNATURE_INVALID = ("CKR_SIGNATURE_INVALID", 0x0C0, _REQ,
                         "the signature does not verify", px.SignatureInvalid)
    SIGNATURE_LEN_RANGE = ("CKR_SIGNATURE_LEN_RANGE", 0x0C1, _REQ,
                           "the signature has the wrong length", px.SignatureLenRange)
    TEMPLATE_INCOMPLETE = ("CKR_TEMPLATE_INCOMPLETE", 0x0D0, _REQ,
                           "the template lacks a required attribute", px.TemplateIncomplete)
    TEMPLATE_INCONSISTENT = ("CKR_TEMPLATE_INCONSISTENT", 0x0D1, _REQ,
                             "the template's attributes contradict each other",
                             px.TemplateInconsistent)
    TOKEN_NOT_PRESENT = ("CKR_TOKEN_NOT_PRESENT", 0x0E0, _DOWN,
                         "the token is not present (the member is out of service)",
                         px.TokenNotPresent)
    TOKEN_NOT_RECOGNIZED = ("CKR_TOKEN_NOT_RECOGNIZED", 0x0E1, _DOWN,
                            "the token is not recognised", px.TokenNotRecognised)
    TOKEN_WRITE_PROTECTED = ("CKR_TOKEN_WRITE_PROTECTED", 0x0E2, _REQ,
                             "the token is write-protected", px.TokenWriteProtected)
    UNWRAPPING_KEY_HANDLE_INVALID = ("CKR_UNWRAPPING_KEY_HANDLE_INVALID", 0x0F0, _REQ,
                                     "no unwrapping key has that handle",
                                     px.UnwrappingKeyHandleInvalid)
    UNWRAPPING_KEY_SIZE_RANGE = ("CKR_UNWRAPPING_KEY_SIZE_RANGE", 0x0F1, _REQ,
                                 "the unwrapping key's size is outside what the mechanism "
                                 "supports", px.UnwrappingKeySizeRange)
    UNWRAPPING_KEY_TYPE_INCONSISTENT = ("CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT", 0x0F2, _REQ,
                                        "the unwrapping key's type does not fit the mechanism",
                                        px.UnwrappingKeyTypeInconsistent)
    USER_ALREADY_LOGGED_IN = ("CKR_USER_ALREADY_LOGGED_IN", 0x100, _REQ,
                              "already logged in", px.UserAlreadyLoggedIn)
    USER_NOT_LOGGED_IN = ("CKR_USER_NOT_LOGGED_IN", 0x101, _REQ,
                          "log in first", px.UserNotLoggedIn)
    USER_PIN_NOT_INITIALIZED = ("CKR_USER_PIN_NOT_INITIALIZED", 0x102, _REQ,
                                "the user PIN was never set", px.UserPinNotInitialized)
    USER_TYPE_INVALID = ("CKR_USER_TYPE_INVALID", 0x103, _REQ,
                         "unknown user type", _BARE, "user type invalid")
    USER_ANOTHER_ALREADY_LOGGED_IN = ("CKR_USER_ANOTHER_ALREADY_LOGGED_IN", 0x104, _REQ,
                                      "another user is already logged in",
                                      px.AnotherUserAlreadyLoggedIn)
    USER_TOO_MANY_TYPES = ("CKR_USER_TOO_MANY_TYPES", 0x105, _REQ,
                           "too many different users are logged in", px.UserTooManyTypes)
    WRAPPED_KEY_INVALID = ("CKR_WRAPPED_KEY_INVALID", 0x110, _REQ,
                           "the wrapped key is not valid", px.WrappedKeyInvalid)
    WRAPPED_KEY_LEN_RANGE = ("CKR_WRAPPED_KEY_LEN_RANGE", 0x112, _REQ,
                             "the wrapped key has the wrong length", px.WrappedKeyLenRange)
    WRAPPING_KEY_HANDLE_INVALID = ("CKR_WRAPPING_KEY_HANDLE_INVALID", 0x113, _REQ,
                                   "no wrapping key has that handle",
                                   px.WrappingKeyHandleInvalid)
    WRAPPING_KEY_SIZE_RANGE = ("CKR_WRAPPING_KEY_SIZE_RANGE", 0x114, _REQ,
                               "the wrapping key's size is outside what the mechanism supports",
                               px.WrappingKeySizeRange)
    WRAPPING_KEY_TYPE_INCONSISTENT = ("CKR_WRAPPING_KEY_TYPE_INCONSISTENT", 0x115, _REQ,
                                      "the wrapping key's type does not fit the mechanism",
                                      px.WrappingKeyTypeInconsistent)
    RANDOM_SEED_NOT_SUPPORTED = ("CKR_RANDOM_SEED_NOT_SUPPORTED", 0x120, _REQ,
                                 "the token's random number generator takes no seed",
                                 px.RandomSeedNotSupported)
    RANDOM_NO_RNG = ("CKR_RANDOM_NO_RNG", 0x121, _REQ,
                     "the token has no random number generator", px.RandomNoRNG)
    DOMAIN_PARAMS_INVALID = ("CKR_DOMAIN_PARAMS_INVALID", 0x130, _REQ,
                             "the domain parameters (e.g. the curve) are invalid or unsupported",
                             px.DomainParamsInvalid)
    CURVE_NOT_SUPPORTED = ("CKR_CURVE_NOT_SUPPORTED", 0x140, _REQ,
                           "the token does not support that elliptic curve")
    BUFFER_TOO_SMALL = ("CKR_BUFFER_TOO_SMALL", 0x150, _REQ,
                        "the output buffer is too small", _BARE, "buffer was too small")
    SAVED_STATE_INVALID = ("CKR_SAVED_STATE_INVALID", 0x160, _REQ,
                           "the saved operation state is not valid")
    INFORMATION_SENSITIVE = ("CKR_INFORMATION_SENSITIVE", 0x170, _REQ,
                             "the token will not reveal that information")
    STATE_UNSAVEABLE = ("CKR_STATE_UNSAVEABLE", 0x180, _REQ,
                        "the operation's state cannot be saved")
    CRYPTOKI_NOT_INITIALIZED = ("CKR_CRYPTOKI_NOT_INITIALIZED", 0x190, _DOWN,
                                "the PKCS#11 library is not initialised", _BARE,
                                "not initialized")
    CRYPTOKI_ALREADY_INITIALIZED = ("CKR_CRYPTOKI_ALREADY_INITIALIZED", 0x191, _REQ,
                                    "the PKCS#11 library was already initialised", _BARE,
                                    "already initialized")
    MUTEX_BAD = ("CKR_MUTEX_BAD", 0x1A0, _REQ,
                 "the PKCS#11 library was given a bad mutex")
    MUTEX_NOT_LOCKED = ("CKR_MUTEX_NOT_LOCKED", 0x1A1, _REQ,
                        "the PKCS#11 library was asked to unlock a mutex that was not locked")
    NEW_PIN_MODE = ("CKR_NEW_PIN_MODE", 0x1B0, _REQ,
                    "the token asks for a new PIN (one-time password mode)")
    NEXT_OTP = ("CKR_NEXT_OTP", 0x1B1, _REQ,
                "the token asks for the next one-time password")
    EXCEEDED_MAX_ITERATIONS = ("CKR_EXCEEDED_MAX_ITERATIONS", 0x1B5, _REQ,
                               "key generation gave up after too many attempts",
                               px.ExceededMaxIterations)
    FIPS_SELF_TEST_FAILED = ("CKR_FIPS_SELF_TEST_FAILED", 0x1B6, _REQ,
                             "a self test did not give the known answer")
    LIBRARY_LOAD_FAILED = ("CKR_LIBRARY_LOAD_FAILED", 0x1B7, _REQ,
                           "the token could not load a library it needs")
    PIN_TOO_WEAK = ("CKR_PIN_TOO_WEAK", 0x1B8, _REQ,
                    "the PIN is too weak for the token's policy", px.PinTooWeak)
    PUBLIC_KEY_INVALID = ("CKR_PUBLIC_KEY_INVALID", 0x1B9, _REQ,
                          "the public key is not valid", px.PublicKeyInvalid)
    FUNCTION_REJECTED = ("CKR_FUNCTION_REJECTED", 0x200, _REQ,
                         "the request was rejected (e.g. by the user at a PIN pad)",
                         px.FunctionRejected)
    OPERATION_CANCEL_FAILED = ("CKR_OPERATION_CANCEL_FAILED", 0x202, _REQ,
                               "the operation could not be cancelled", _BARE,
                               "failed to cancel operation")
    VENDOR_DEFINED = ("CKR_VENDOR_DEFINED", 0x80000000, _REQ,
                      "a vendor-specific error: see the HSM vendor's documentation")


#: name -> code; plain strings find members too (a member hashes as its name).
_BY_NAME: dict[str, CKR] = {c.value: c for c in CKR}
#: numeric value -> code.
_BY_RV: dict[int, CKR] = {c.rv: c for c in CKR}


def _check_table() -> None:
    # the value is written out next to the member name (a str enum's value must
    # exist before the member knows its name); catch a typo at import
    for c in CKR:
        if c.value != f"CKR_{c.name}":
            raise ValueError(f"CKR.{c.name} has the value {c.value!r}")
    if len(_BY_RV) != len(CKR):
        raise ValueError("two CKR members share a numeric value")


_check_table()

#: python-pkcs11 exception class -> code: each code's own class, and classes
#: python-pkcs11 raises for conditions that are not return codes (NoSuchKey,
#: ...) mapped to the code an application would have seen from the raw call.
_BY_EXCEPTION: dict[type[BaseException], CKR] = {
    c.exception: c for c in CKR if c.exception is not None and c.exception is not _BARE
}
_BY_EXCEPTION.update({
    px.NoSuchKey: CKR.KEY_HANDLE_INVALID,
    px.NoSuchToken: CKR.TOKEN_NOT_PRESENT,
    px.MultipleObjectsReturned: CKR.ARGUMENTS_BAD,
    px.MultipleTokensReturned: CKR.ARGUMENTS_BAD,
})

#: (words of the message, code) for python-pkcs11's bare PKCS11Error.
_BY_MESSAGE: tuple[tuple[str, CKR], ...] = tuple(
    (c.pkcs11_message, c) for c in CKR if c.pkcs11_message is not None
)

#: CKR name -> numeric value (kept for callers of the earlier table).
CKR_CODES: dict[str, int] = {c: c.rv for c in CKR}

#: numeric value -> CKR name.
CKR_NAMES: dict[int, str] = {c.rv: c for c in CKR}

#: Codes that mean the member's transport is gone (device, its connection, or
#: our sessions on it).  Only these mark a member down by themselves.
MEMBER_FAILURE_CODES: frozenset[str] = frozenset(c for c in CKR if c.member_failure)

#: Codes a healthy token also gives to a wrong request: SoftHSM2 behind p11-kit
#: 0.25 answers ``CKR_GENERAL_ERROR`` to e.g. signing with an AES key under
#: ``CKM_SHA256_RSA_PKCS``.  Such an error is the request's until the same call
#: succeeds on another member: only then was the first member sick.  The two
#: handle codes are here because the engine only ever hands a member a handle
#: that member gave it for an object the group knows: a member that calls it
#: invalid has lost state the others kept (SoftHSM2 drops the handles of private
#: objects when its token is logged out), unless no member has the object.
SUSPECT_CODES: frozenset[str] = frozenset(c for c in CKR if c.suspect)

_UNMAPPED_RE = re.compile(r"0x([0-9a-fA-F]+)")

#: What :func:`explain` says of a name that is not in the table.
UNKNOWN_EXPLANATION = "see the PKCS#11 specification"


def ckr_name(error: BaseException | int | str | None) -> str:
    """Return the ``CKR_*`` name for an exception, a numeric code, or a name.

    The answer is a :class:`CKR` member when the code is in the table, else a
    plain string (``CKR_0x00000123`` for an unknown number).  ``None`` gives
    ``CKR_OK``.  Engine errors carrying a code (``.ckr``) give it; python-pkcs11
    exceptions are mapped by class; a bare ``PKCS11Error`` is decoded from its
    message; a timeout is ``CKR_DEVICE_ERROR``; anything else is
    ``CKR_GENERAL_ERROR``.
    """
    if error is None:
        return CKR.OK
    if isinstance(error, str):
        name = error if error.startswith("CKR_") else f"CKR_{error.upper()}"
        return _BY_NAME.get(name, name)
    if isinstance(error, int):
        return _BY_RV.get(error) or f"CKR_0x{error:08X}"
    ckr = getattr(error, "ckr", None)
    if isinstance(ckr, str):
        return ckr
    for klass in type(error).__mro__:
        code = _BY_EXCEPTION.get(klass)
        if code is not None:
            return code
    if isinstance(error, px.PKCS11Error):
        text = str(error)
        low = text.lower()
        for words, code in _BY_MESSAGE:
            if words in low:
                return code
        m = _UNMAPPED_RE.search(text)
        if m:
            return ckr_name(int(m.group(1), 16))
        # python-pkcs11 raising its base class for a non-code condition: a
        # request problem, never evidence that the member is gone
        return CKR.FUNCTION_FAILED
    if isinstance(error, TimeoutError | OSError | ConnectionError):
        return CKR.DEVICE_ERROR
    return CKR.GENERAL_ERROR


def ckr_value(name: str) -> int:
    """Numeric value of a ``CKR_*`` name (KeyError if unknown)."""
    return _BY_NAME[name].rv


def explain(name: str) -> str:
    """The table's one line for a ``CKR_*`` name, for error and status lines."""
    code = _BY_NAME.get(name)
    return code.explanation if code is not None else UNKNOWN_EXPLANATION


def is_member_failure(error: BaseException) -> bool:
    """True when ``error`` means the member's transport is gone.

    Loading problems (an ``OSError`` while loading a module), connection
    losses and timeouts count as member failures, and so do the codes of kind
    :attr:`CKRKind.MEMBER_FAILURE`.  A request error never does, and neither
    does a *suspect* code (:func:`is_suspect`) on its own.
    """
    if isinstance(error, TimeoutError | ConnectionError | OSError):
        return True
    if not isinstance(error, px.PKCS11Error) and not hasattr(error, "ckr"):
        return False  # a Python error (bad argument, bug): never the member's fault
    return ckr_name(error) in MEMBER_FAILURE_CODES


def is_suspect(error: BaseException) -> bool:
    """True for an error that is a request error unless another member serves the
    same call (:attr:`CKR.suspect`); the caller asks a second member to decide."""
    if not isinstance(error, px.PKCS11Error) and not hasattr(error, "ckr"):
        return False
    return ckr_name(error) in SUSPECT_CODES


__all__ = [
    "CKR",
    "CKR_CODES",
    "CKR_NAMES",
    "MEMBER_FAILURE_CODES",
    "SUSPECT_CODES",
    "UNKNOWN_EXPLANATION",
    "CKRKind",
    "ckr_name",
    "ckr_value",
    "explain",
    "is_member_failure",
    "is_suspect",
]
