"""Plain result types of the engine API (status reports, slot and token info)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from hacli.engine.ckr import CKR

#: Slot description of a virtual HA slot (CKDemo shows it in the slot list).
HA_SLOT_DESCRIPTION = "HA Virtual Card Slot"


@dataclass(frozen=True)
class RecoveryState:
    """Where a down member stands in its group's recovery policy.

    Times are wall-clock (seconds since the epoch), converted from the
    policy's monotonic clock.  They are this engine's: each process that runs
    an engine has its own policy, as each Luna client application has.
    """

    #: When this engine marked the member down.
    down_since: float
    #: Recovery attempts made on it since (``recover_attempt_count``).
    attempts_used: int
    #: Attempts it has left; None: unlimited (``reconnAtt`` -1).
    attempts_left: int | None
    #: When the next attempt becomes due; None: none will be made (its
    #: attempts are used up, or recovery is off with ``reconnAtt`` 0).
    next_attempt: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberStatus:
    """One member in a status report.

    ``status`` follows the origin document: ``CKR_OK`` in service,
    ``CKR_DEVICE_ERROR`` in the first report after a failure,
    ``CKR_TOKEN_NOT_PRESENT`` in every later one until it is back.
    """

    serial: str
    status: str
    alive: bool
    needs_sync: bool = False
    last_error: str | None = None
    down_for: float | None = None
    ops: int = 0
    #: The recovery policy's record of a member that is down (None while it serves).
    recovery: RecoveryState | None = None
    #: ``active``, ``standby`` (serves only when no active member does) or
    #: ``promoted`` (a standby serving now); see hacli.engine.standby.
    role: str = "active"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupStatus:
    """An HA group's status: ``CKR_OK`` while a member serves, else ``CKR_DEVICE_ERROR``."""

    label: str
    serial: str
    status: str
    members: tuple[MemberStatus, ...] = ()
    logged_in: bool = False
    recovery_attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.status == CKR.OK

    @property
    def degraded(self) -> bool:
        return self.ok and any(not m.alive for m in self.members)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "serial": self.serial, "status": self.status,
                "members": [{"serial": m.serial, "status": m.status} for m in self.members]}


class RecoveryOutcome(enum.StrEnum):
    """What an administrator's recovery (``group.recover``) did for one member."""

    #: It was down and serves again (logged ``recovered``; its count reset).
    RECOVERED = "recovered"
    #: It served already: nothing to recover.
    IN_SERVICE = "in-service"
    #: The attempt failed: it is still down (``RecoveryResult.ckr`` says why).
    FAILED = "failed"
    #: Another attempt on it was running at that moment: not tried again.
    BUSY = "busy"


@dataclass(frozen=True)
class RecoveryResult:
    """One member's outcome of ``group.recover``."""

    serial: str
    outcome: RecoveryOutcome
    #: Why it is still down (a ``CKR_*`` name), for FAILED.
    ckr: str | None = None

    @property
    def ok(self) -> bool:
        """True when the member serves now."""
        return self.outcome in (RecoveryOutcome.RECOVERED, RecoveryOutcome.IN_SERVICE)

    def describe(self) -> str:
        """One line for people: ``recovered``, ``still down (CKR_...)``, ..."""
        if self.outcome is RecoveryOutcome.FAILED:
            return f"still down ({self.ckr or CKR.DEVICE_ERROR})"
        if self.outcome is RecoveryOutcome.BUSY:
            return "a recovery attempt on it is running; try again"
        return "in service" if self.outcome is RecoveryOutcome.IN_SERVICE else "recovered"

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "outcome": str(self.outcome), "ckr": self.ckr}


@dataclass(frozen=True)
class SlotInfo:
    """One entry of the engine's slot list."""

    slot_id: int
    description: str
    kind: str  # "member" or "ha"
    token_label: str
    token_serial: str
    group: str | None = None
    present: bool = True


@dataclass(frozen=True)
class TokenInfo:
    """Token information of a member or of a virtual HA slot."""

    label: str
    serial: str
    manufacturer_id: str
    model: str
    flags: int = 0
    hardware_version: tuple[int, int] = (0, 0)
    firmware_version: tuple[int, int] = (0, 0)
    members: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SessionInfo:
    """State of a (virtual) session."""

    handle: int
    #: The slot the session was opened on (a member slot for a pinned session).
    slot_id: int | None
    group: str
    rw: bool
    #: The user (Crypto Officer) is logged in.
    logged_in: bool
    member: str | None = None  # set for a session pinned to one member
    #: The Security Officer is logged in.
    so_logged_in: bool = False

    @property
    def state(self) -> str:
        """PKCS#11 session state name (``CKS_RW_USER_FUNCTIONS``, ...)."""
        if self.so_logged_in:
            return "CKS_RW_SO_FUNCTIONS"  # an SO login needs R/W sessions only
        who = "USER_FUNCTIONS" if self.logged_in else "PUBLIC_SESSION"
        return f"CKS_{'RW' if self.rw else 'RO'}_{who}"


@dataclass(frozen=True)
class ObjectSummary:
    """A token object as an inventory sees it: its identity, never its value.

    Objects are matched across members by class, ``CKA_ID``, ``CKA_LABEL``
    and key type (data objects: label and ``CKA_APPLICATION``).
    """

    object_class: str  # "CKO_SECRET_KEY", ...
    label: str | None = None
    id: str | None = None  # CKA_ID in hex
    key_type: str | None = None  # "CKK_AES", ...
    application: str | None = None  # data objects
    sensitive: bool | None = None  # secret and private keys

    def describe(self) -> str:
        """One line for people: ``CKO_SECRET_KEY CKK_AES label='k' id=0a1b``."""
        parts = [self.object_class]
        if self.key_type:
            parts.append(self.key_type)
        if self.label is not None:
            parts.append(f"label={self.label!r}")
        if self.id:
            parts.append(f"id={self.id}")
        if self.application:
            parts.append(f"application={self.application!r}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberInventory:
    """One member in an inventory comparison.

    ``missing``: objects some other member has and this one lacks.
    ``reachable`` is False for a member that is down (its inventory is unknown).
    """

    serial: str
    reachable: bool
    objects: int = 0
    missing: tuple[ObjectSummary, ...] = ()
    error: str | None = None

    @property
    def needs_sync(self) -> bool:
        return bool(self.missing)

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "reachable": self.reachable, "objects": self.objects,
                "needs_sync": self.needs_sync, "error": self.error,
                "missing": [o.as_dict() for o in self.missing]}


@dataclass(frozen=True)
class InventoryDiff:
    """What each member of a group lacks compared to the union of their token objects."""

    group: str
    members: tuple[MemberInventory, ...] = ()

    @property
    def in_sync(self) -> bool:
        """True when every reachable member has every object the others have."""
        return not any(m.missing for m in self.members)

    def member(self, serial: str) -> MemberInventory:
        for m in self.members:
            if m.serial == serial:
                return m
        raise KeyError(serial)

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "in_sync": self.in_sync,
                "members": [m.as_dict() for m in self.members]}


@dataclass(frozen=True)
class SyncFailure:
    """An object that could not be copied to a member, and why."""

    serial: str
    object: ObjectSummary
    ckr: str
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "object": self.object.as_dict(), "ckr": self.ckr,
                "reason": self.reason}


@dataclass(frozen=True)
class SyncConflict:
    """An object some members hold and others lack that no change recorded by
    hacli explains (made outside the group, or destroyed elsewhere while a
    member was down): reported, never copied blindly (``adopt`` copies it)."""

    serial: str  # a member that lacks it
    object: ObjectSummary
    holders: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "object": self.object.as_dict(),
                "holders": list(self.holders)}


@dataclass(frozen=True)
class SyncReport:
    """Result of :meth:`HAGroup.synchronize`.

    ``copied``: (member serial, object, how: ``wrap``/``value``; ``-`` for session
    objects).  ``destroyed``: destroys replayed from the journal.
    ``conflicts``: objects not copied because nothing explains them.
    ``unreachable``: members that are down (not synchronised).  With
    ``dry_run`` nothing was changed: ``copied`` and ``destroyed`` are the plan.
    """

    group: str
    copied: tuple[tuple[str, ObjectSummary, str], ...] = ()
    failed: tuple[SyncFailure, ...] = ()
    unreachable: tuple[str, ...] = ()
    destroyed: int = 0
    conflicts: tuple[SyncConflict, ...] = ()
    dry_run: bool = False
    #: (member serial, object) of each destroy replayed (or planned)
    destroys: tuple[tuple[str, ObjectSummary], ...] = ()

    @property
    def complete(self) -> bool:
        """True when every reachable member now has every object."""
        return not self.failed and not self.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group, "complete": self.complete, "dry_run": self.dry_run,
                "copied": [{"serial": s, "object": o.as_dict(), "how": how}
                           for s, o, how in self.copied],
                "destroys": [{"serial": s, "object": o.as_dict()} for s, o in self.destroys],
                "failed": [f.as_dict() for f in self.failed],
                "conflicts": [c.as_dict() for c in self.conflicts],
                "unreachable": list(self.unreachable), "destroyed": self.destroyed}


__all__ = ["HA_SLOT_DESCRIPTION", "GroupStatus", "InventoryDiff", "MemberInventory",
           "MemberStatus", "ObjectSummary", "RecoveryState", "SessionInfo", "SlotInfo",
           "SyncConflict", "SyncFailure", "SyncReport", "TokenInfo"]
