"""Exceptions raised by :mod:`hacli.engine`.

Every error an application sees from an HA group is a :class:`CKRError`: it
carries the ``CKR_*`` name (``.ckr``) the equivalent PKCS#11 call would have
returned, so the CLI can print it and applications can test it.  The original
python-pkcs11 exception, when there is one, is chained as ``__cause__``.

All of them derive from :class:`hacli.errors.EngineError`.  No message ever
contains a PIN or key material (:func:`request_error`).
"""

from __future__ import annotations

import re

import pkcs11

from hacli.engine.ckr import CKR, ckr_name
from hacli.errors import EngineError


class CKRError(EngineError):
    """A PKCS#11 operation through the engine failed with a ``CKR_*`` code.

    :ivar ckr: the ``CKR_*`` name, e.g. ``CKR_MECHANISM_INVALID``: the
        :class:`~hacli.engine.ckr.CKR` member when the code is in the table
        (it compares equal to the plain name), else the string as given.
    :ivar operation: what was attempted (``"C_Sign"``, ``"login"``, ...).
    :ivar member: serial of the member that answered, when one did.
    """

    def __init__(self, ckr: CKR | str, operation: str = "", member: str | None = None,
                 detail: str = ""):
        # a plain name becomes its CKR member, so .code and .rv need no lookup
        self.ckr: str = ckr if isinstance(ckr, CKR) else (CKR.get(ckr) or ckr)
        self.operation = operation
        self.member = member
        self.detail = detail
        parts = [f"{operation}: {ckr}" if operation else ckr]
        if member:
            parts.append(f"(member {member})")
        if detail:
            parts.append(f"- {detail}")
        super().__init__(" ".join(parts))

    @property
    def code(self) -> CKR | None:
        """The table's record of :attr:`ckr` (None for a code it lacks)."""
        return self.ckr if isinstance(self.ckr, CKR) else None

    @property
    def rv(self) -> int:
        """Numeric value of :attr:`ckr` (``-1`` when unknown)."""
        return self.ckr.rv if isinstance(self.ckr, CKR) else -1


class GroupDownError(CKRError):
    """No member of the HA group can serve the call (``CKR_DEVICE_ERROR``)."""

    def __init__(self, operation: str = "", group: str = "", detail: str = ""):
        self.group = group
        super().__init__(CKR.DEVICE_ERROR, operation,
                         detail=detail or f"no member of HA group {group!r} is available")


class CallTimeout(CKRError, TimeoutError):
    """A call into a member did not return within the command timeout.

    The member is marked down; the stuck call is abandoned (see docs/engine.md).
    """

    def __init__(self, operation: str = "", member: str | None = None, timeout: float = 0.0):
        self.timeout = timeout
        super().__init__(CKR.DEVICE_ERROR, operation, member,
                         detail=f"no answer within {timeout:g} s")


class MemberBusy(Exception):
    """A failover retry found the member busy with another call for all of its
    budget: not a failure (the member is not marked down), try another member.
    Internal: never reaches the application."""


class ModuleUnavailable(CKRError):
    """A member's module instance is abandoned (stuck) or closed; internal use."""

    def __init__(self, member: str | None = None, detail: str = "module instance unavailable"):
        super().__init__(CKR.DEVICE_ERROR, "", member, detail=detail)


_BYTES_LITERAL = re.compile(r"""(?:b|bytearray\()(['"]).*?(?<!\\)\1\)?""", re.DOTALL)


def safe_detail(e: BaseException) -> str:
    """A Python error's message for a CKRError, with any bytes literal (which
    could be key material from a template) cut out, and short."""
    text = _BYTES_LITERAL.sub("<bytes>", str(e))
    return text if len(text) <= 160 else text[:157] + "..."


def request_error(e: BaseException, operation: str, member: str | None) -> BaseException:
    """What the caller sees for an error that is not a member failure (see
    :func:`hacli.engine.ckr.is_member_failure`): a :class:`CKRError`, unless it
    is a Python error the engine does not know (a bug: raised as it is)."""
    if isinstance(e, CKRError):
        return e
    if isinstance(e, pkcs11.PKCS11Error):
        err = CKRError(ckr_name(e), operation, member)
        err.__cause__ = e
        return err
    if isinstance(e, AttributeError):
        # python-pkcs11 objects lack e.g. .sign when the key may not sign
        return CKRError(CKR.KEY_FUNCTION_NOT_PERMITTED, operation)
    if isinstance(e, TypeError | ValueError):
        return CKRError(CKR.ARGUMENTS_BAD, operation, detail=safe_detail(e))
    return e


__all__ = ["CKRError", "CallTimeout", "GroupDownError", "MemberBusy", "ModuleUnavailable",
           "request_error", "safe_detail"]
