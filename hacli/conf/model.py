"""Build the typed HA model (:mod:`hacli.conf.model_types`) from a document.

Luna's HA settings live in four sections: ``VirtualToken`` (the groups),
``HASynchronize`` (per-group synchronisation), ``HAConfiguration`` (recovery,
logging, HAOnly) and ``LunaSA Client`` (``ReceiveTimeout``).  hacli's own
section ``hacli`` says where each member's PKCS#11 module is.

:func:`load_config` is what every reader calls: it validates the document with
:func:`hacli.conf.check.require_valid` (the rules live there, once) and then
builds the model.  The ``load_*`` parts build without judging: they assume a
document that passed that check.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hacli.conf import spec
from hacli.conf.model_types import (
    HACLI_SECTION,
    GroupConf,
    HAConfig,
    HASettings,
    MemberLocation,
)
from hacli.errors import ConfValueError

if TYPE_CHECKING:
    from hacli.conf.document import Document

VT = "VirtualToken"
HASYNC = "HASynchronize"
HACONF = "HAConfiguration"
CLIENT = "LunaSA Client"

#: The keys of one group, ``VirtualTokenNN<field>``; ``Standby`` lists the
#: standby members (comma-separated, like ``Members``).
GROUP_FIELDS = ("Label", "SN", "Members", "Standby")
GROUP_KEY = re.compile(rf"^VirtualToken(\d\d)({'|'.join(GROUP_FIELDS)})$", re.IGNORECASE)
#: ``NN`` has two digits: VirtualToken00 .. VirtualToken99
MAX_GROUP_INDEX = 99
MEMBER_KEY = re.compile(r"^Member(\d\d)(Serial|Library|Environment)$", re.IGNORECASE)


def _where(doc: Document, section: str, key: str) -> str:
    line = doc.line_of(section, key)
    path = doc.path or "<config>"
    return f"{path}:{line}" if line else path


def typed_int(doc: Document, section: str, key: str) -> int:
    """:func:`typed` for an ``integer`` setting of the spec."""
    value = typed(doc, section, key)
    assert isinstance(value, int), f"{section}/{key} is not an integer in ha.spec"
    return value


def typed(doc: Document, section: str, key: str) -> spec.SettingValue:
    """The value of a spec'd setting, typed, or its default when absent."""
    setting = spec.lookup(section, key)
    assert setting is not None, f"{section}/{key} is not in ha.spec"
    raw = doc.get(section, key)
    if raw is None:
        return setting.default
    return spec.convert(section, key, raw, where=_where(doc, section, key))


def split_members(raw: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``; empty items dropped."""
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def group_indexes(doc: Document) -> list[int]:
    """The NN of every ``VirtualTokenNN*`` key, sorted."""
    found = set()
    if doc.has_section(VT):
        for key in doc.keys(VT):
            m = GROUP_KEY.match(key)
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def sync_enabled(doc: Document, label: str) -> bool:
    """``HASynchronize``: ``<label> = 1`` enables automatic synchronisation."""
    return bool(typed(doc, HASYNC, label))


def load_groups(doc: Document) -> tuple[GroupConf, ...]:
    """Every HA group of the document, in ``VirtualTokenNN`` order."""
    groups = []
    for n in group_indexes(doc):
        label = (doc.get(VT, f"VirtualToken{n:02d}Label") or "").strip()
        members = split_members(doc.get(VT, f"VirtualToken{n:02d}Members") or "")
        serial = (doc.get(VT, f"VirtualToken{n:02d}SN") or "").strip()
        if not serial and members:
            serial = "1" + members[0]
        standby_key = f"VirtualToken{n:02d}Standby"
        standby = split_members(doc.get(VT, standby_key) or "")
        strays = [s for s in standby if s not in members]
        if strays:
            raise ConfValueError(
                f"{_where(doc, VT, standby_key)}: [{VT}] {standby_key}: standby "
                f"{', '.join(strays)} is not a member of {label} (VirtualToken{n:02d}Members)"
            )
        groups.append(GroupConf(n, label, serial, members, sync_enabled(doc, label),
                                tuple(dict.fromkeys(standby))))
    return tuple(groups)


def load_settings(doc: Document) -> HASettings:
    """The global HA settings, typed, with the spec's defaults."""
    log_path = str(typed(doc, HACONF, "haLogPath")) or None
    return HASettings(
        reconn_att=typed_int(doc, HACONF, "reconnAtt"),
        auto_reconnect_interval=typed_int(doc, HACONF, "AutoReconnectInterval"),
        ha_only=bool(typed(doc, HACONF, "HAOnly")),
        ha_log_enabled=typed(doc, HACONF, "haLogStatus") == "enabled",
        ha_log_path=log_path,
        log_len=typed_int(doc, HACONF, "logLen"),
        ha_log_format=str(typed(doc, HACLI_SECTION, "haLogFormat")),
        recovery_mode=str(typed(doc, VT, "VirtualTokenActiveRecovery")),
        receive_timeout_ms=typed_int(doc, CLIENT, "ReceiveTimeout"),
        member_concurrency=typed_int(doc, HACLI_SECTION, "MemberConcurrency"),
        multipart_journal_bytes=typed_int(doc, HACLI_SECTION, "MultipartJournalBytes"),
    )


def parse_environment(raw: str) -> dict[str, str]:
    """``"A=1, B=x=y"`` -> ``{"A": "1", "B": "x=y"}`` (split at the first ``=``)."""
    env = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfValueError(f"environment entry {item!r} is not NAME=VALUE")
        env[name.strip()] = value.strip()
    return env


def load_members(doc: Document) -> dict[str, MemberLocation]:
    """Member module locations from the ``hacli`` section, by serial."""
    members = {}
    for _n, fields in sorted(member_entries(doc).items()):
        serial, library = fields.get("serial", ""), fields.get("library", "")
        env = parse_environment(fields.get("environment", ""))
        members[serial] = MemberLocation(serial=serial, library=library, env=env)
    return members


def member_entries(doc: Document) -> dict[int, dict[str, str]]:
    """The ``MemberNN*`` keys of the ``hacli`` section: NN -> {field: value}."""
    by_index: dict[int, dict[str, str]] = {}
    if doc.has_section(HACLI_SECTION):
        for key, value in doc.items(HACLI_SECTION):
            m = MEMBER_KEY.match(key)
            if m:
                by_index.setdefault(int(m.group(1)), {})[m.group(2).lower()] = value.strip()
    return by_index


#: Luna's own library keys, in the order a 64-bit Unix, 32-bit Unix, Windows client uses.
LUNA_LIBRARY_KEYS = ("LibUNIX64", "LibUNIX", "LibNT")


def luna_library(doc: Document) -> str | None:
    """The Luna client's PKCS#11 library named in ``Chrystoki2``, if any."""
    if not doc.has_section("Chrystoki2"):
        return None
    for key in LUNA_LIBRARY_KEYS:
        value = (doc.get("Chrystoki2", key) or "").strip()
        if value:
            return value
    return None


def load_config(doc: Document, path: str | None = None) -> HAConfig:
    """The typed :class:`HAConfig` of a valid document.

    Raises :class:`~hacli.errors.ConfFileError` naming the file, line and
    problem when the document breaks a rule of :mod:`hacli.conf.check`.
    Members not listed in ``[hacli]`` are looked for in ``DefaultLibrary``,
    else in the Luna client's own library (``Chrystoki2``), so that on a Luna
    client hacli reaches the partitions with no extra configuration.
    """
    # Imported here: the check reads this module's names and builders.
    from hacli.conf.check import require_valid

    require_valid(doc)
    default_library = str(typed(doc, HACLI_SECTION, "DefaultLibrary")) or luna_library(doc)
    return HAConfig(
        settings=load_settings(doc),
        groups=load_groups(doc),
        members=load_members(doc),
        default_library=default_library,
        lab_dir=str(typed(doc, HACLI_SECTION, "LabDir")).strip() or None,
        path=path or doc.path,
    )
