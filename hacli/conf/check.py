"""The one validation of the HA sections, for readers, writers and ``conf check``.

:func:`check` lists every finding with its line: values the configspec refuses,
groups that cannot be built (no label, no members, a member that is not a
serial, a member listed twice or in two groups, a label or serial used twice),
members' module entries that are incomplete (errors); unknown or misspelt HA
keys and sections with the closest known spelling, retired keys, an interval
outside what Luna clients accept, ``HASynchronize`` entries for no group
(warnings).  Non-HA sections (``Chrystoki2``, ``Luna``, ...) are Luna's business
and are not judged.

The three users apply the same findings:

* readers (:func:`hacli.conf.model.load_config`, through :func:`require_valid`)
  refuse a file with an error: :class:`~hacli.errors.ConfFileError`, exit 1;
* writers (:class:`WriteCheck`) refuse a change that adds an error, or adds a
  warning without ``--force``: :class:`~hacli.errors.ConfValueError`, exit 2,
  nothing written;
* ``hacli conf check`` prints them all (exit 1 when there is an error).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypedDict

from hacli.conf import spec
from hacli.conf.document import Document
from hacli.conf.model import (
    GROUP_FIELDS,
    GROUP_KEY,
    HACONF,
    HASYNC,
    MEMBER_KEY,
    VT,
    group_indexes,
    member_entries,
    parse_environment,
    split_members,
)
from hacli.conf.model_types import HACLI_SECTION
from hacli.errors import ConfFileError, ConfParseError, ConfValueError

if TYPE_CHECKING:
    from collections.abc import Iterable

#: Sections whose every key hacli knows, so an unknown key there is suspicious.
STRICT_SECTIONS = (HACONF, VT, HACLI_SECTION)

#: Keys earlier hacli versions wrote and this one ignores: (section, key) -> why.
RETIRED_KEYS = {
    (HACLI_SECTION, "replicatebyvalue"): (
        "ReplicateByValue is no longer used: secret and private keys are replicated "
        "only wrapped under the group transport key; remove this line"),
}

#: Characters a member serial cannot hold: the list separator, blanks, and the
#: file syntaxes' own punctuation.
SERIAL_FORBIDDEN = " ,;{}[]=\t"
#: Characters a group label cannot hold (it is also a key of ``HASynchronize``).
LABEL_FORBIDDEN = ",;{}[]=\t"


def valid_name(text: str, forbidden: str) -> bool:
    """Whether ``text`` is a usable serial (``SERIAL_FORBIDDEN``) or label
    (``LABEL_FORBIDDEN``): not empty, printable, none of ``forbidden``."""
    return bool(text) and text.isprintable() and not any(c in text for c in forbidden)


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

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """The finding without its line: the same problem after lines moved."""
        return (self.severity, self.section.casefold(), (self.key or "").casefold(),
                self.message)


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
    spec_names = spec.spec_sections()
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
                                        f"unknown HA key {key!r} in [{canonical}]{hint}"))
                continue
            try:
                typed = spec.convert(canonical, key, value)
            except ConfValueError as e:
                findings.append(Finding("error", line, section, key, str(e)))
                continue
            luna = spec.outside_luna(canonical, key, typed)
            if luna:
                findings.append(Finding("warning", line, section, key, luna))
    findings += _check_groups(doc)
    findings += _check_members(doc)
    return sorted(findings, key=lambda f: (f.line or 0))


def _check_groups(doc: Document) -> list[Finding]:
    out: list[Finding] = []
    if not doc.has_section(VT):
        return out
    seen_labels: dict[str, int] = {}
    seen_serials: dict[str, int] = {}
    owner: dict[str, str] = {}

    def error(key: str, message: str, at: int | None) -> None:
        out.append(Finding("error", at, VT, key, message))

    for n in group_indexes(doc):
        label_key, members_key = f"VirtualToken{n:02d}Label", f"VirtualToken{n:02d}Members"
        sn_key = f"VirtualToken{n:02d}SN"
        label = (doc.get(VT, label_key) or "").strip()
        members = split_members(doc.get(VT, members_key) or "")
        line = doc.line_of(VT, members_key) or doc.line_of(VT, label_key)
        name = label or f"VirtualToken{n:02d}"
        if not label:
            error(label_key, f"[{VT}] group VirtualToken{n:02d} has no {label_key}", line)
        elif not valid_name(label, LABEL_FORBIDDEN):
            error(label_key, f"[{VT}] {label_key}: {label!r} is not a valid group label",
                  doc.line_of(VT, label_key))
        elif label.lower() in seen_labels:
            error(label_key, f"an HA group labelled {label!r} already exists "
                             f"(VirtualToken{seen_labels[label.lower()]:02d}); "
                             f"VirtualToken{n:02d} repeats the label", line)
        else:
            seen_labels[label.lower()] = n
        if not members:
            error(members_key, f"group {name} has no members ({members_key})", line)
        standby_key = f"VirtualToken{n:02d}Standby"
        for member in split_members(doc.get(VT, standby_key) or ""):
            if member not in members:
                error(standby_key, f"standby {member} is not a member of group {name}",
                      doc.line_of(VT, standby_key) or line)
        for member in dict.fromkeys(members):
            if not valid_name(member, SERIAL_FORBIDDEN):
                error(members_key, f"member {member!r} of group {name} is not a serial number",
                      line)
            elif members.count(member) > 1:
                error(members_key, f"member {member} is listed more than once in group {name}",
                      line)
            elif member in owner:
                error(members_key, f"member {member} of group {name} is already a member of "
                                   f"group {owner[member]} (a member belongs to one HA group)",
                      line)
            owner.setdefault(member, name)
        serial = (doc.get(VT, sn_key) or "").strip() or ("1" + members[0] if members else "")
        if serial and serial in seen_serials:
            error(sn_key, f"an HA group with serial {serial} already exists "
                          f"(VirtualToken{seen_serials[serial]:02d}); "
                          f"VirtualToken{n:02d} repeats the serial",
                  doc.line_of(VT, sn_key) or line)
        seen_serials.setdefault(serial, n)
    if doc.has_section(HASYNC):
        for key in doc.keys(HASYNC):
            if key.lower() not in seen_labels:
                out.append(Finding("warning", doc.line_of(HASYNC, key), HASYNC, key,
                                   f"HASynchronize entry for unknown group {key!r}"))
    return out


def _check_members(doc: Document) -> list[Finding]:
    """``MemberNN*`` of the ``hacli`` section: where each member's module is."""
    out: list[Finding] = []
    for n, fields in sorted(member_entries(doc).items()):
        if not fields.get("serial") or not fields.get("library"):
            key = f"Member{n:02d}Serial"
            out.append(Finding(
                "error", doc.line_of(HACLI_SECTION, key) or doc.line_of(HACLI_SECTION),
                HACLI_SECTION, key, f"[{HACLI_SECTION}] Member{n:02d} needs both "
                f"Member{n:02d}Serial and Member{n:02d}Library"))
        try:
            parse_environment(fields.get("environment", ""))
        except ConfValueError as e:
            key = f"Member{n:02d}Environment"
            out.append(Finding("error", doc.line_of(HACLI_SECTION, key), HACLI_SECTION, key,
                               f"[{HACLI_SECTION}] {key}: {e}"))
    return out


def errors(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that make a file unreadable."""
    return [f for f in findings if f.severity == "error"]


def _one_line(found: list[Finding], where: str = "") -> str:
    first = found[0]
    more = f" (and {len(found) - 1} more problem(s))" if len(found) > 1 else ""
    return f"{where}{first.message}{more}"


def require_valid(doc: Document) -> None:
    """What every reader does first: raise :class:`ConfFileError` naming the
    file, line and problem of the first error (``hacli conf check`` lists all)."""
    _refuse_errors(doc, check(doc))


def _refuse_errors(doc: Document, findings: list[Finding]) -> None:
    found = errors(findings)
    if found:
        path = doc.path or "<config>"
        where = f"{path}:{found[0].line}: " if found[0].line else f"{path}: "
        hint = "; 'hacli conf check' lists every problem" if len(found) > 1 else ""
        raise ConfFileError(_one_line(found, where) + hint)


class WriteCheck:
    """What a command may write, judged by :func:`check` on the would-be file.

    Made from the document as read (under the edit lock).  A file with an
    error is refused unless ``repair`` is set (``conf set``, the tool that
    mends a file): then what was wrong may stay.  :meth:`verify` refuses a
    change that adds an error, or a warning (an unknown or misspelt key, an
    interval Luna clients refuse) unless ``force`` is True; ``force`` None
    means the command has no ``--force``.
    """

    def __init__(self, doc: Document, *, force: bool | None = None,
                 repair: bool = False) -> None:
        found = check(doc)
        if not repair:
            _refuse_errors(doc, found)
        self._before = {f.identity for f in found}
        self.force = force

    def verify(self, doc: Document) -> list[str]:
        """Raise :class:`ConfValueError` for a change that may not be written;
        else the warnings to print about what ``--force`` let through."""
        # Judge what would be written, read back, not the edited object.
        try:
            again = Document.parse(doc.dumps(), doc.path)
        except ConfParseError as e:
            raise ConfValueError(f"the change would make the file unreadable: {e}") from None
        new = [f for f in check(again) if f.identity not in self._before]
        if errors(new):
            raise ConfValueError(_one_line(errors(new)))
        if new and not self.force:
            hint = " (add --force to write it anyway)" if self.force is not None else ""
            raise ConfValueError(_one_line(new) + hint)
        return [f"{f.message} (written with --force)" for f in new]
