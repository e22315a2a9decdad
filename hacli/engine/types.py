"""Plain result types of the engine API (status reports, slot and token info)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: Slot description of a virtual HA slot (CKDemo shows it in the slot list).
HA_SLOT_DESCRIPTION = "HA Virtual Card Slot"


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
        return self.status == "CKR_OK"

    @property
    def degraded(self) -> bool:
        return self.ok and any(not m.alive for m in self.members)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "serial": self.serial, "status": self.status,
                "members": [{"serial": m.serial, "status": m.status} for m in self.members]}


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
    slot_id: int | None
    group: str
    rw: bool
    logged_in: bool
    member: str | None = None  # set for a session pinned to one member

    @property
    def state(self) -> str:
        """PKCS#11 session state name (``CKS_RW_USER_FUNCTIONS``, ...)."""
        who = "USER_FUNCTIONS" if self.logged_in else "PUBLIC_SESSION"
        return f"CKS_{'RW' if self.rw else 'RO'}_{who}"


__all__ = ["HA_SLOT_DESCRIPTION", "GroupStatus", "MemberStatus", "SessionInfo", "SlotInfo",
           "TokenInfo"]
