"""``conf check``: a validation report over the HA sections of a document.

It reports, with the line of each finding: unknown or misspelt HA keys (with
the closest known spelling), values the configspec refuses, and groups whose
members repeat.  Non-HA sections (``Chrystoki2``, ``Luna``, ...) are Luna's
business and are not judged.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from hacli.conf import spec
from hacli.conf.model import GROUP_FIELDS, GROUP_KEY, HASYNC, MEMBER_KEY, VT, split_members
from hacli.conf.model_types import HACLI_SECTION
from hacli.errors import ConfValueError

if TYPE_CHECKING:
    from hacli.conf.document import Document

#: Sections whose every key hacli knows, so an unknown key there is suspicious.
STRICT_SECTIONS = ("HAConfiguration", "VirtualToken", HACLI_SECTION)

#: Keys earlier hacli versions wrote and this one ignores: (section, key) -> why.
RETIRED_KEYS = {
    (HACLI_SECTION, "replicatebyvalue"): (
        "ReplicateByValue is no longer used: secret and private keys are replicated "
        "only wrapped under the group transport key; remove this line"),
}


Severity = Literal["error", "warning"]


class FindingDict(TypedDict):
    """:meth:`Finding.as_dict`: one finding of ``conf check --json``."""

    severity: Severity
    line: int | None
    section: str
    key: str | None
    message: str


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`check`."""

    severity: Severity
    line: int | None
    section: str
    key: str | None
    message: str

    def as_dict(self) -> FindingDict:
        """JSON-ready form."""
        return FindingDict(
            severity=self.severity,
            line=self.line,
            section=self.section,
            key=self.key,
            message=self.message,
        )


def _known_keys(section: str, key: str) -> list[str]:
    known = [s.key for s in spec.settings() if s.section.lower() == section.lower()]
    nn = re.search(r"\d\d", key)
    n = nn.group(0) if nn else "00"
    if section.lower() == VT.lower():
        known += [f"VirtualToken{n}{f}" for f in GROUP_FIELDS]
    if section.lower() == HACLI_SECTION:
        known += [f"Member{n}{f}" for f in ("Serial", "Library", "Environment")]
    return known


def _is_known(section: str, key: str) -> bool:
    if spec.lookup(section, key):
        return True
    if section.lower() == VT.lower():
        return bool(GROUP_KEY.match(key))
    if section.lower() == HACLI_SECTION:
        return bool(MEMBER_KEY.match(key))
    return False


def _suggest(word: str, choices: list[str]) -> str:
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lower), n=1, cutoff=0.6)
    return f"; did you mean {lower[close[0]]}?" if close else ""


def check(doc: Document) -> list[Finding]:
    """Every finding in the document, in file order."""
    findings: list[Finding] = []
    spec_names = [*spec.spec_sections(), HASYNC]
    for section in doc.sections():
        canonical = next((s for s in spec_names if s.lower() == section.lower()), None)
        if canonical is None:
            hint = _suggest(section, spec_names)
            if hint:
                findings.append(Finding("warning", doc.line_of(section), section, None,
                                        f"unknown section {section!r}{hint}"))
            continue
        for key, value in doc.items(section):
            line = doc.line_of(section, key)
            retired = RETIRED_KEYS.get((canonical, key.lower()))
            if retired:
                findings.append(Finding("warning", line, section, key, retired))
                continue
            if canonical in STRICT_SECTIONS and not _is_known(canonical, key):
                hint = _suggest(key, _known_keys(canonical, key))
                findings.append(Finding("warning", line, section, key,
                                        f"unknown HA key {key!r}{hint}"))
                continue
            try:
                spec.convert(canonical, key, value)
            except ConfValueError as e:
                findings.append(Finding("error", line, section, key, str(e)))
    findings += _check_groups(doc)
    return sorted(findings, key=lambda f: (f.line or 0))


def _check_groups(doc: Document) -> list[Finding]:
    out: list[Finding] = []
    if not doc.has_section(VT):
        return out
    seen_labels: dict[str, int] = {}
    owner: dict[str, str] = {}
    indexes = sorted({int(m.group(1)) for k in doc.keys(VT) if (m := GROUP_KEY.match(k))})
    for n in indexes:
        label_key, members_key = f"VirtualToken{n:02d}Label", f"VirtualToken{n:02d}Members"
        label = (doc.get(VT, label_key) or "").strip()
        members = split_members(doc.get(VT, members_key) or "")
        line = doc.line_of(VT, members_key) or doc.line_of(VT, label_key)
        if not label:
            out.append(Finding("error", line, VT, label_key, f"group {n:02d} has no label"))
        elif label.lower() in seen_labels:
            first = seen_labels[label.lower()]
            out.append(Finding("error", line, VT, label_key,
                               f"label {label!r} is used by groups {first:02d} and {n:02d}"))
        else:
            seen_labels[label.lower()] = n
        if not members:
            out.append(Finding("error", line, VT, members_key,
                               f"group {label or n} has no members"))
        for member in sorted({x for x in members if members.count(x) > 1}):
            out.append(Finding("error", line, VT, members_key,
                               f"member {member} repeats in group {label or n}"))
        standby_key = f"VirtualToken{n:02d}Standby"
        for member in split_members(doc.get(VT, standby_key) or ""):
            if member not in members:
                out.append(Finding("error", doc.line_of(VT, standby_key), VT, standby_key,
                                   f"standby {member} is not a member of group {label or n}"))
        for member in dict.fromkeys(members):
            if member in owner and owner[member] != label:
                out.append(Finding("warning", line, VT, members_key,
                                   f"member {member} is in groups {owner[member]} and {label}"))
            owner.setdefault(member, label)
    if doc.has_section(HASYNC):
        for key in doc.keys(HASYNC):
            if key.lower() not in seen_labels:
                out.append(Finding("warning", doc.line_of(HASYNC, key), HASYNC, key,
                                   f"HASynchronize entry for unknown group {key!r}"))
    return out
