"""Exceptions raised by :mod:`hacli.engine`.

Every error an application sees from an HA group is a :class:`CKRError`: it
carries the ``CKR_*`` name (``.ckr``) the equivalent PKCS#11 call would have
returned, so the CLI can print it and applications can test it.  The original
python-pkcs11 exception, when there is one, is chained as ``__cause__``.

All of them derive from :class:`hacli.errors.EngineError`.  No message ever
contains a PIN.
"""

from __future__ import annotations

from hacli.errors import EngineError


class CKRError(EngineError):
    """A PKCS#11 operation through the engine failed with a ``CKR_*`` code.

    :ivar ckr: the ``CKR_*`` name, e.g. ``"CKR_MECHANISM_INVALID"``.
    :ivar operation: what was attempted (``"C_Sign"``, ``"login"``, ...).
    :ivar member: serial of the member that answered, when one did.
    """

    def __init__(self, ckr: str, operation: str = "", member: str | None = None,
                 detail: str = ""):
        self.ckr = ckr
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
    def rv(self) -> int:
        """Numeric value of :attr:`ckr` (``-1`` when unknown)."""
        from hacli.engine.ckr import CKR_CODES

        return CKR_CODES.get(self.ckr, -1)


class GroupDownError(CKRError):
    """No member of the HA group can serve the call (``CKR_DEVICE_ERROR``)."""

    def __init__(self, operation: str = "", group: str = "", detail: str = ""):
        self.group = group
        super().__init__("CKR_DEVICE_ERROR", operation,
                         detail=detail or f"no member of HA group {group!r} is available")


class CallTimeout(CKRError, TimeoutError):
    """A call into a member did not return within the command timeout.

    The member is marked down; the stuck call is abandoned (see docs/engine.md).
    """

    def __init__(self, operation: str = "", member: str | None = None, timeout: float = 0.0):
        self.timeout = timeout
        super().__init__("CKR_DEVICE_ERROR", operation, member,
                         detail=f"no answer within {timeout:g} s")


class ModuleUnavailable(CKRError):
    """A member's module instance is abandoned (stuck) or closed; internal use."""

    def __init__(self, member: str | None = None, detail: str = "module instance unavailable"):
        super().__init__("CKR_DEVICE_ERROR", "", member, detail=detail)


__all__ = ["CKRError", "CallTimeout", "GroupDownError", "ModuleUnavailable"]
