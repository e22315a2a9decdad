"""What the lab's API hands out: its constants, member and status values, LabUsageError.

Plain values only (no files, no processes), so every other lab module can
import them without importing each other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacli.errors import LabError, UsageError

#: Label of the lab's HA group in its Chrystoki.conf.
GROUP_LABEL = "labgroup"
#: Members a new lab gets when the caller does not say.
DEFAULT_MEMBERS = 2
MAX_MEMBERS = 16

RUNNING = "running"
FAILED = "failed"
HUNG = "hung"
#: Stopped on purpose by ``down`` (no server process, none expected until ``up``).
STOPPED = "stopped"


class LabUsageError(LabError, UsageError):
    """A request the lab cannot take (unknown member, bad count): nothing changed.

    Both a :class:`LabError` and a :class:`UsageError`, so the CLI exits 2.
    """


def group_serial_of(first_serial: str) -> str:
    """The group's serial: ``1`` + member0's serial (what Chrystoki.conf and lab.json say)."""
    return "1" + first_serial


def names_member(which: str, serial: str, label: str) -> bool:
    """True when *which* names this member: its serial, or its label in any case."""
    return which == serial or which.lower() == label.lower()


@dataclass(frozen=True)
class LabMember:
    """One member as configured: where a PKCS#11 client reaches it."""

    index: int
    label: str
    serial: str
    socket: Path
    #: The member's own SoftHSM2 configuration (its token directory only): what
    #: its server runs with, and what opens its token directly, without p11-kit.
    softhsm2_conf: Path

    @property
    def softhsm2_env(self) -> dict[str, str]:
        """Environment of a direct ``libsofthsm2.so`` client of this member's token."""
        return {"SOFTHSM2_CONF": str(self.softhsm2_conf)}

    @property
    def address(self) -> str:
        """The value of ``P11_KIT_SERVER_ADDRESS`` for this member."""
        return f"unix:path={self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Environment a copy of ``p11-kit-client.so`` must be *loaded* with."""
        return {"P11_KIT_SERVER_ADDRESS": self.address}

    @property
    def uri(self) -> str:
        """The PKCS#11 URI the member's server exports (its token, nothing else)."""
        return f"pkcs11:token={self.label};serial={self.serial}"


@dataclass(frozen=True)
class MemberStatus:
    """A member's state, derived from its process (not from lab.json)."""

    serial: str
    label: str
    #: ``running``, ``failed`` (its server died or was killed), ``hung``
    #: (SIGSTOP) or ``stopped`` (``down`` ended it; ``up`` starts it again).
    state: str
    #: Pid of the member's ``p11-kit server`` (its process group id), None if gone.
    pid: int | None
    #: The member's own SoftHSM2 configuration (opens its token directly).
    softhsm2_conf: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "label": self.label,
            "state": self.state,
            "pid": self.pid,
            "softhsm2_conf": self.softhsm2_conf,
        }


@dataclass(frozen=True)
class LabStatus:
    """What ``hacli lab status --json`` prints (:meth:`as_dict` is that contract)."""

    dir: str
    conf: str
    group: str
    #: member0's SoftHSM2 configuration (each member has its own, in
    #: :attr:`MemberStatus.softhsm2_conf`; see docs/lab.md).
    softhsm2_conf: str
    pin_file: str
    members: tuple[MemberStatus, ...]
    #: The client module of the lab's p11-kit build (what MemberNNLibrary names).
    p11kit_client: str = ""
    #: That build's version (from its pkg-config file).
    p11kit_version: str = ""
    #: The group's serial (``1`` + the first member's serial); not in the JSON.
    group_serial: str = ""
    #: Serials of members this call started, restarted or resumed (``up``);
    #: empty when the lab was already up.  Not in the JSON.
    started: tuple[str, ...] = ()
    #: True when this call created the lab (``up`` on an empty directory).
    created: bool = False
    #: What ``up`` changed besides processes, one line each (an older lab's
    #: Chrystoki.conf brought up to date, a server of another p11-kit
    #: restarted).  Not in the JSON.
    notes: tuple[str, ...] = ()

    @property
    def all_running(self) -> bool:
        return all(m.state == RUNNING for m in self.members)

    @property
    def not_running(self) -> tuple[MemberStatus, ...]:
        """The members that serve nothing now (failed, hung or stopped)."""
        return tuple(m for m in self.members if m.state != RUNNING)

    def member(self, which: str) -> MemberStatus:
        """The member with this serial or label; KeyError if none."""
        for m in self.members:
            if names_member(which, m.serial, m.label):
                return m
        raise KeyError(which)

    def as_dict(self) -> dict[str, Any]:
        """Exactly the fields of the ``hacli lab status --json`` contract."""
        return {
            "dir": self.dir,
            "conf": self.conf,
            "group": self.group,
            "softhsm2_conf": self.softhsm2_conf,
            "pin_file": self.pin_file,
            "p11kit_client": self.p11kit_client,
            "p11kit_version": self.p11kit_version,
            "members": [m.as_dict() for m in self.members],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.as_dict(), indent=indent)
