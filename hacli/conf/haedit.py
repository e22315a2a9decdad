"""Edits of the HA sections, as lunacm's ``hagroup`` commands make them.

Pure functions over a :class:`~hacli.conf.document.Document`: they validate
first and change the document only when every value is valid, so a refused
command leaves the file untouched.  The CLI wraps them in ``store.edit``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hacli.conf import spec
from hacli.conf.model import (
    GROUP_FIELDS,
    HACONF,
    HASYNC,
    VT,
    group_indexes,
    load_groups,
    split_members,
)
from hacli.conf.model_types import GroupConf
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.conf.document import Document


def set_setting(doc: Document, section: str, key: str, value: str) -> spec.SettingValue:
    """Validate against the spec, then set; returns the typed value.

    The key keeps the file's spelling when it exists and the spec's otherwise.
    """
    setting = spec.lookup(section, key)
    typed = spec.convert(section, key, value)
    if setting is not None and not doc.has_section(section):
        section = setting.section
    if setting is not None and doc.get(section, key) is None:
        key = setting.key
    doc.set(section, key, value)
    return typed


def set_retry(doc: Document, interval: int | None, count: str | None) -> None:
    """``hagroup retry``: creates ``HAConfiguration`` only when a value is set."""
    if interval is None and count is None:
        raise UsageError("give --interval and/or --count")
    # Validate both before writing either: a refused command changes nothing.
    if interval is not None:
        spec.convert(HACONF, "AutoReconnectInterval", str(interval))
    if count is not None:
        spec.convert(HACONF, "reconnAtt", count)
    if interval is not None:
        set_setting(doc, HACONF, "AutoReconnectInterval", str(interval))
    if count is not None:
        n = spec.convert(HACONF, "reconnAtt", count)
        set_setting(doc, HACONF, "reconnAtt", str(n))


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
    if not serial or any(c in serial for c in " ,;{}[]=\t") or not serial.isprintable():
        raise UsageError(f"{serial!r} is not a valid serial number")
    return serial


def _check_label(label: str) -> str:
    label = label.strip()
    if not label or any(c in label for c in ";{}[]=,\t") or not label.isprintable():
        raise UsageError(f"{label!r} is not a valid group label")
    return label


def create_group(
    doc: Document, label: str, members: list[str], serial: str | None = None
) -> GroupConf:
    """``hagroup creategroup``: the next ``VirtualTokenNN`` plus ``HASynchronize``."""
    label = _check_label(label)
    members = [_check_serial(m) for m in members]
    if not members:
        raise UsageError("a group needs at least one member")
    dupes = sorted({m for m in members if members.count(m) > 1})
    if dupes:
        raise UsageError(f"member {', '.join(dupes)} given more than once")
    groups = load_groups(doc)
    if any(g.label.lower() == label.lower() for g in groups):
        raise UsageError(f"an HA group labelled {label!r} already exists")
    serial = _check_serial(serial) if serial else "1" + members[0]
    if any(g.serial == serial for g in groups):
        raise UsageError(f"an HA group with serial {serial} already exists")
    n = (max(group_indexes(doc)) + 1) if group_indexes(doc) else 0
    doc.set(VT, f"VirtualToken{n:02d}Label", label)
    doc.set(VT, f"VirtualToken{n:02d}SN", serial)
    doc.set(VT, f"VirtualToken{n:02d}Members", ",".join(members))
    doc.set(HASYNC, label, "1")
    return GroupConf(n, label, serial, tuple(members), True)


def add_member(doc: Document, label: str, serial: str) -> GroupConf:
    """``hagroup addmember``: append a serial to the group's member list."""
    group = find_group(doc, label)
    serial = _check_serial(serial)
    if serial in group.members:
        raise UsageError(f"{serial} is already a member of {group.label}")
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
    "split_members",
]
