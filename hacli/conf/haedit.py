"""Edits of the HA sections, as lunacm's ``hagroup`` commands make them.

Pure functions over a :class:`~hacli.conf.document.Document`.  They refuse
what they cannot even express (an unknown group, a label the file syntax
cannot hold); whether the edited document is one hacli may write is judged
afterwards, by the same rules every reader applies
(:class:`hacli.conf.check.WriteCheck`, which the CLI's edits run before the
file is written), so a refused command leaves the file untouched.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hacli.conf import spec
from hacli.conf.check import LABEL_FORBIDDEN, SERIAL_FORBIDDEN, valid_name
from hacli.conf.model import (
    GROUP_FIELDS,
    HACONF,
    HASYNC,
    MAX_GROUP_INDEX,
    VT,
    group_indexes,
    load_groups,
    split_members,
)
from hacli.conf.model_types import GroupConf
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.conf.document import Document


def set_setting(doc: Document, section: str, key: str, value: str) -> None:
    """Set a value (Luna configurator's ``setValue``).

    The key keeps the file's spelling when it exists and the spec's otherwise.
    """
    setting = spec.lookup(section, key)
    if setting is not None and not doc.has_section(section):
        section = setting.section
    if setting is not None and doc.get(section, key) is None:
        key = setting.key
    doc.set(section, key, value)


def set_retry(doc: Document, interval: int | None, count: str | None) -> None:
    """``hagroup retry``: creates ``HAConfiguration`` only when a value is set."""
    if interval is None and count is None:
        raise UsageError("give --interval and/or --count")
    if interval is not None:
        set_setting(doc, HACONF, "AutoReconnectInterval", str(interval))
    if count is not None:
        # Luna's words (unlimited) are written as the number a Luna client reads.
        set_setting(doc, HACONF, "reconnAtt", str(spec.convert(HACONF, "reconnAtt", count)))


def find_group(doc: Document, label: str) -> GroupConf:
    """The group with this label (case-insensitive) or a UsageError naming the known ones."""
    groups = load_groups(doc)
    for g in groups:
        if g.label.lower() == label.lower():
            return g
    known = ", ".join(g.label for g in groups) or "none"
    raise UsageError(f"no HA group labelled {label!r} (groups: {known})")


def _check_serial(serial: str) -> str:
    serial = serial.strip()
    if not valid_name(serial, SERIAL_FORBIDDEN):
        raise UsageError(f"{serial!r} is not a valid serial number")
    return serial


def _check_label(label: str) -> str:
    label = label.strip()
    if not valid_name(label, LABEL_FORBIDDEN):
        raise UsageError(f"{label!r} is not a valid group label")
    return label


def create_group(
    doc: Document, label: str, members: list[str], serial: str | None = None
) -> GroupConf:
    """``hagroup creategroup``: the next ``VirtualTokenNN`` plus ``HASynchronize``.

    A label, serial or member another group has is left to the write check.
    """
    label = _check_label(label)
    members = [_check_serial(m) for m in members]
    if not members:
        raise UsageError("a group needs at least one member")
    serial = _check_serial(serial) if serial else "1" + members[0]
    n = (max(group_indexes(doc)) + 1) if group_indexes(doc) else 0
    if n > MAX_GROUP_INDEX:
        # VirtualToken100Label is no group key: said plainly, not as an unknown key
        raise UsageError(f"no group number left: VirtualToken{MAX_GROUP_INDEX:02d} is taken "
                         f"(VirtualTokenNN numbers at most {MAX_GROUP_INDEX + 1} groups); "
                         "delete a group first")
    doc.set(VT, f"VirtualToken{n:02d}Label", label)
    doc.set(VT, f"VirtualToken{n:02d}SN", serial)
    doc.set(VT, f"VirtualToken{n:02d}Members", ",".join(members))
    doc.set(HASYNC, label, "1")
    return GroupConf(n, label, serial, tuple(members), True)


def add_member(doc: Document, label: str, serial: str) -> GroupConf:
    """``hagroup addmember``: append a serial to the group's member list."""
    group = find_group(doc, label)
    serial = _check_serial(serial)
    members = (*group.members, serial)
    doc.set(VT, f"VirtualToken{group.index:02d}Members", ",".join(members))
    return dataclasses.replace(group, members=members)


def remove_member(doc: Document, label: str, serial: str) -> GroupConf:
    """``hagroup removemember``: a group keeps at least one member."""
    group = find_group(doc, label)
    if serial not in group.members:
        raise UsageError(
            f"{serial} is not a member of {group.label} (members: {', '.join(group.members)})"
        )
    members = tuple(m for m in group.members if m != serial)
    if not members:
        raise UsageError(f"{serial} is the last member of {group.label}; use deletegroup")
    standby = tuple(m for m in group.standby if m != serial)
    if members == standby:
        raise UsageError(f"{serial} is the last active member of {group.label}; "
                         "remove a standby member first (hagroup removestandby)")
    doc.set(VT, f"VirtualToken{group.index:02d}Members", ",".join(members))
    if standby != group.standby:  # a removed member is no standby either
        _write_standby(doc, group.index, standby)
    return dataclasses.replace(group, members=members, standby=standby)


def _write_standby(doc: Document, index: int, standby: tuple[str, ...]) -> None:
    key = f"VirtualToken{index:02d}Standby"
    if standby:
        doc.set(VT, key, ",".join(standby))
    else:
        doc.remove_key(VT, key)


def add_standby(doc: Document, label: str, serial: str) -> GroupConf:
    """``hagroup addstandby``: a member of the group becomes a standby member.

    As in Luna, the serial must be a member already (``hagroup addmember``
    first); it cannot be standby in two groups, and a group keeps at least one
    active member.
    """
    group = find_group(doc, label)
    serial = _check_serial(serial)
    if serial in group.standby:
        raise UsageError(f"{serial} is already a standby member of {group.label}")
    other = next((g for g in load_groups(doc) if g.index != group.index and serial in g.standby),
                 None)
    if other is not None:
        raise UsageError(f"{serial} is already a standby member of {other.label}")
    if serial not in group.members:
        raise UsageError(f"{serial} is not a member of {group.label} (members: "
                         f"{', '.join(group.members)}); add it first with hagroup addmember")
    if group.active == (serial,):
        raise UsageError(f"{serial} is the last active member of {group.label}; "
                         "a group keeps at least one")
    standby = (*group.standby, serial)
    _write_standby(doc, group.index, standby)
    return dataclasses.replace(group, standby=standby)


def remove_standby(doc: Document, label: str, serial: str) -> GroupConf:
    """``hagroup removestandby``: a standby member becomes an active member again."""
    group = find_group(doc, label)
    serial = serial.strip()
    if serial not in group.standby:
        shown = ", ".join(group.standby) or "none"
        raise UsageError(f"{serial} is not a standby member of {group.label} "
                         f"(standby members: {shown})")
    standby = tuple(m for m in group.standby if m != serial)
    _write_standby(doc, group.index, standby)
    return dataclasses.replace(group, standby=standby)


def set_synchronize(doc: Document, label: str, enabled: bool) -> GroupConf:
    """``hagroup synchronize --enable | --disable``: the group's ``HASynchronize`` flag."""
    group = find_group(doc, label)
    set_setting(doc, HASYNC, group.label, "1" if enabled else "0")
    return GroupConf(group.index, group.label, group.serial, group.members, enabled)


def delete_group(doc: Document, label: str) -> GroupConf:
    """``hagroup deletegroup``: keeps ``VirtualTokenNN`` numbering dense."""
    group = find_group(doc, label)
    for field in GROUP_FIELDS:
        doc.remove_key(VT, f"VirtualToken{group.index:02d}{field}")
    if doc.has_section(HASYNC):
        doc.remove_key(HASYNC, group.label)
    # Renumber the groups above the deleted one; their values move, nothing else does.
    for n in [i for i in group_indexes(doc) if i > group.index]:
        for field in GROUP_FIELDS:
            old = f"VirtualToken{n:02d}{field}"
            value = doc.get(VT, old)
            if value is not None:
                doc.rename_key(VT, old, f"VirtualToken{n - 1:02d}{field}")
    return group


__all__ = [
    "add_member",
    "add_standby",
    "create_group",
    "delete_group",
    "find_group",
    "remove_member",
    "remove_standby",
    "set_retry",
    "set_setting",
    "set_synchronize",
    "split_members",
]
