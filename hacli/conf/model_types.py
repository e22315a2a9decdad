"""The typed HA model: plain dataclasses, no parsing.

These are what the engine consumes.  :mod:`hacli.conf.model` builds them from a
lossless :class:`~hacli.conf.document.Document`; applications using
:mod:`hacli.engine` as a library may also build them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Name of hacli's own section (member module locations, lab settings).
HACLI_SECTION = "hacli"

RECOVERY_MODES = ("activeBasic", "activeEnhanced")


@dataclass(frozen=True)
class HASettings:
    """Global HA settings (``HAConfiguration``, ``VirtualToken``, ``LunaSA Client``,
    and the engine settings of hacli's own section)."""

    #: ``reconnAtt``: -1 = retry forever, 0 = auto-recovery off, 1..500 attempts.
    reconn_att: int = -1
    #: ``AutoReconnectInterval`` in seconds (X of the origin pseudo-code).
    auto_reconnect_interval: int = 60
    #: ``HAOnly``: hide member slots from the slot list.
    ha_only: bool = False
    #: ``haLogStatus = enabled``.
    ha_log_enabled: bool = False
    #: ``haLogPath``: directory of ``haErrorLog.txt``.
    ha_log_path: str | None = None
    #: ``logLen``: rotate the HA log past this many bytes.
    log_len: int = 100_000_000
    #: ``haLogFormat`` (hacli's section): ``text`` (Luna's lines) or ``json``.
    ha_log_format: str = "text"
    #: ``VirtualTokenActiveRecovery``.
    recovery_mode: str = "activeBasic"
    #: ``ReceiveTimeout`` (``LunaSA Client``), milliseconds: the command timeout.
    receive_timeout_ms: int = 20_000
    #: ``MemberConcurrency`` (``hacli``): calls at once per member connection
    #: where the module is thread-safe (1 = one at a time).
    member_concurrency: int = 4
    #: ``MultipartJournalBytes`` (hacli's section): the input a multi-part
    #: operation keeps to be replayed on another member; 0 = no replay.
    multipart_journal_bytes: int = 1_048_576


@dataclass(frozen=True)
class GroupConf:
    """One HA group: a ``VirtualTokenNN*`` entry plus its ``HASynchronize`` flag.

    ``standby`` (``VirtualTokenNNStandby``) names the members that receive every
    replicated object but serve calls only while no other member does; each is
    also in ``members``.
    """

    index: int
    label: str
    serial: str
    members: tuple[str, ...]
    synchronize: bool = False
    standby: tuple[str, ...] = ()

    @property
    def active(self) -> tuple[str, ...]:
        """The members that are not standby (they serve calls)."""
        return tuple(m for m in self.members if m not in self.standby)


@dataclass(frozen=True)
class SlotNumber:
    """One slot of the slot list: its number, its group, and the member it is
    (None for the group's HA virtual slot)."""

    slot_id: int
    group: str
    member: str | None = None


def number_slots(groups: Sequence[GroupConf], ha_only: bool = False) -> list[SlotNumber]:
    """The slot list's numbering, the one the engine, the menu and ``listgroups`` show.

    Member slots first, from 1, in group and member order (none with
    ``HAOnly``), then one HA virtual slot per group, as a Luna client lists
    its slots.
    """
    out: list[SlotNumber] = []
    if not ha_only:
        out += [SlotNumber(0, g.label, m) for g in groups for m in g.members]
    out += [SlotNumber(0, g.label) for g in groups]
    return [SlotNumber(i, n.group, n.member) for i, n in enumerate(out, start=1)]


@dataclass(frozen=True)
class MemberLocation:
    """Where a member token's PKCS#11 module is, from hacli's own section.

    Members whose ``(library, env)`` are equal share one module instance;
    different environments (e.g. two p11-kit server addresses) need separate
    instances, which the engine makes by copying the library.
    """

    serial: str
    library: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HAConfig:
    """Everything the engine needs from a configuration file."""

    settings: HASettings = HASettings()
    groups: tuple[GroupConf, ...] = ()
    members: dict[str, MemberLocation] = field(default_factory=dict)
    #: Library for members not listed in ``members`` (``hacli.DefaultLibrary``).
    default_library: str | None = None
    #: The lab that wrote this file (``hacli.LabDir``): its PIN files serve as PIN sources.
    lab_dir: str | None = None
    path: str | None = None

    def group(self, label: str) -> GroupConf:
        """Return the group with this label (case-insensitive); KeyError if none."""
        for g in self.groups:
            if g.label.lower() == label.lower():
                return g
        raise KeyError(label)

    def location(self, serial: str) -> MemberLocation | None:
        """Module location of a member, falling back to the default library."""
        loc = self.members.get(serial)
        if loc is None and self.default_library:
            loc = MemberLocation(serial=serial, library=self.default_library)
        return loc
