"""Lossless Chrystoki.conf / crystoki.ini documents.

One model, :class:`Document`, serves both syntaxes Luna clients use:

``brace`` (Unix ``Chrystoki.conf``)::

    Chrystoki2 = {
       LibUNIX64 = /usr/safenet/lunaclient/lib/libCryptoki2_64.so;
    }

``ini`` (Windows ``crystoki.ini``)::

    [Chrystoki2]
    LibNT=C:\\Program Files\\SafeNet\\LunaClient\\cryptoki.dll

The document keeps every line of the file as it was read (indentation, spacing
around ``=``, comments, blank lines, each line's own line ending, a missing final
newline, a UTF-8 BOM), so ``Document.parse(data).dumps() == data`` for every file
it accepts, and an edit rewrites, inserts or deletes only the lines it must.

Rules worth knowing (they are choices, Luna documents none of them):

* Look-ups of sections and keys are case-insensitive; the file's spelling is kept.
* Duplicate keys: the *last* occurrence wins (``get`` reads it, ``set`` rewrites
  it, ``keys``/``items`` list the key once, spelled and valued as its last
  occurrence, at the place of its first); ``remove_key`` removes every
  occurrence so the key is really gone.  Sections that appear
  twice are treated as one (their entries merged in file order).
* Brace entries end at the first ``;``; whatever follows it on the line must be
  blank or a comment (``#``, ``//`` or ``;``), which is kept byte for byte.  So a
  value can never contain ``;`` in this syntax.  INI values run to the end of the
  line (Windows has no trailing comments), surrounding blanks excluded.
* A new key goes right after the last entry of its section (for brace files that
  is before the closing ``}``; for INI files it stays above the blank lines and
  comments that separate the section from the next one); in a section without
  entries it goes right after the header.  It copies indentation and spacing from
  the nearest entry (that section's last one, else the file's last one).
* A new section goes at the end of the file, after a blank line when the file
  separates its sections with blank lines.
* New lines use :attr:`Document.newline`; a line they are appended after that had
  no line ending (the file's last line) gets one.
"""

from __future__ import annotations

import copy as _copy
import enum
import re
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

from hacli.errors import ConfParseError, ConfValueError

#: ``brace`` (Unix ``Chrystoki.conf``) or ``ini`` (Windows ``crystoki.ini``).
Syntax: TypeAlias = Literal["brace", "ini"]
#: The line endings a document writes.
Newline: TypeAlias = Literal["\n", "\r\n"]

SYNTAXES: Final[tuple[Syntax, ...]] = ("brace", "ini")
NEWLINES: Final[tuple[Newline, ...]] = ("\n", "\r\n")

_BOM = "\ufeff"

# Default layout of new lines when the file has no entry to copy it from.  Three
# spaces and " = " is what the Luna client installer writes.
_DEFAULT_LAYOUT: Final[dict[Syntax, tuple[str, str, str, str]]] = {
    "brace": ("   ", " ", " ", ";"),
    "ini": ("", "", "", ""),
}

# What may follow the terminating ';' of a brace entry, the '{' of a section
# header or a '}': blanks and an optional comment.
_BRACE_TRAILER = re.compile(r"[ \t\r\f\v]*(?:(?:#|//|;).*)?")
_INI_TRAILER = re.compile(r"[ \t\r\f\v]*(?:[;#].*)?")
_BRACE_HEADER = re.compile(r"\s*(?P<name>[^=\s](?:[^=]*[^=\s])?)\s*=\s*\{(?P<trailer>.*)")
_INI_HEADER = re.compile(r"\s*\[(?P<name>[^\]]*)\](?P<trailer>.*)")

_COMMENT_STARTS: Final[dict[Syntax, tuple[str, ...]]] = {
    "brace": ("#", ";", "//"),
    "ini": (";", "#"),
}


class _Kind(enum.Enum):
    BLANK = "blank"
    COMMENT = "comment"
    HEADER = "header"  # `Name = {` or `[Name]`
    CLOSE = "close"  # `}` (brace only)
    ENTRY = "entry"


@dataclass
class _Line:
    """One physical line; an entry is kept in three parts so its value can change alone."""

    kind: _Kind
    text: str = ""  # the whole line without its ending (not used for entries)
    eol: str = ""  # "\n", "\r\n" or "" (last line without a newline)
    name: str = ""  # section name (header) or key (entry), stripped
    prefix: str = ""  # entry: indentation, key, spacing, '=', spacing
    value: str = ""
    suffix: str = ""  # entry: spacing, ';' and trailing comment (brace); trailing blanks

    def render(self) -> str:
        if self.kind is _Kind.ENTRY:
            return self.prefix + self.value + self.suffix
        return self.text


@dataclass
class _Span:
    """Where one section lives in the line list (recomputed on demand; files are small)."""

    name: str
    header: int  # index of the header line
    end: int  # index one past its last line: after `}` (brace) or the next header (ini)
    entries: list[int] = field(default_factory=list)


class _LineError(Exception):
    """A line that is not valid in the syntax; turned into ConfParseError with its number."""


def _classify(text: str, syntax: Syntax) -> _Line:
    """Parse one line (without its ending) of ``syntax``; raise _LineError if invalid."""
    stripped = text.strip()
    if not stripped:
        return _Line(_Kind.BLANK, text)
    if stripped.startswith(_COMMENT_STARTS[syntax]):
        return _Line(_Kind.COMMENT, text)
    if syntax == "brace":
        if stripped.startswith("}") and _BRACE_TRAILER.fullmatch(stripped[1:]):
            return _Line(_Kind.CLOSE, text)
        m = _BRACE_HEADER.fullmatch(text)
        if m and _BRACE_TRAILER.fullmatch(m["trailer"]):
            return _Line(_Kind.HEADER, text, name=m["name"])
    elif stripped.startswith("["):
        m = _INI_HEADER.fullmatch(text)
        if not m or not _INI_TRAILER.fullmatch(m["trailer"]):
            raise _LineError(f"malformed section header {stripped!r} (expected '[Name]')")
        name = m["name"].strip()
        if not name:
            raise _LineError("empty section name '[]'")
        return _Line(_Kind.HEADER, text, name=name)
    return _entry(text, syntax)


def _entry(text: str, syntax: Syntax) -> _Line:
    eq = text.find("=")
    if eq < 0:
        expected = (
            "'Key = Value;', 'Name = {', '}'" if syntax == "brace" else "'Key=Value', '[Name]'"
        )
        raise _LineError(f"expected {expected} or a comment, got {text.strip()!r}")
    key = text[:eq].strip()
    if not key:
        raise _LineError(f"missing key name before '=' in {text.strip()!r}")
    rest = text[eq + 1 :]
    tail = ""
    if syntax == "brace":
        semi = rest.find(";")
        if semi < 0:
            raise _LineError(f"missing ';' at the end of {text.strip()!r}")
        if not _BRACE_TRAILER.fullmatch(rest[semi + 1 :]):
            raise _LineError(
                f"unexpected text after ';' in {text.strip()!r} (values cannot contain ';')"
            )
        rest, tail = rest[:semi], rest[semi:]
    lead = rest[: len(rest) - len(rest.lstrip())]
    value = rest.strip()
    trail = rest[len(lead) + len(value) :]
    return _Line(
        _Kind.ENTRY, name=key, prefix=text[: eq + 1] + lead, value=value, suffix=trail + tail
    )


def _split_lines(text: str) -> list[tuple[str, str]]:
    """(line, ending) pairs; only "\\n" and "\\r\\n" end lines, so nothing is lost."""
    out = []
    for chunk in text.split("\n"):
        out.append([chunk, "\n"])
    out[-1][1] = ""
    if out[-1][0] == "":
        out.pop()  # the text ended with a newline (or was empty)
    for pair in out:
        if pair[1] and pair[0].endswith("\r"):
            pair[0], pair[1] = pair[0][:-1], "\r\n"
    return [(a, b) for a, b in out]


def _decode(data: bytes, path: str | None) -> str:
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfParseError(
            "not a text file (contains NUL bytes)", path, data.count(b"\n", 0, nul) + 1
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfParseError("not a text file (invalid UTF-8)", path, line) from None


def _detect_syntax(pairs: list[tuple[str, str]], path: str | None) -> Syntax:
    # The first section header decides: a stray key before it must not decide
    # the syntax, or its error message would be about the wrong syntax.
    for text, _ in pairs:
        s = text.strip()
        if s.startswith("["):
            return "ini"
        m = _BRACE_HEADER.fullmatch(text)
        if m and _BRACE_TRAILER.fullmatch(m["trailer"]) and not s.startswith(("#", ";", "//")):
            return "brace"
    # No header at all: the file name is the only hint left.
    return "ini" if path and path.lower().endswith(".ini") else "brace"


def _check_structure(lines: list[_Line], syntax: Syntax, path: str | None) -> None:
    """Raise ConfParseError for lines in the wrong place (nesting, stray '}', orphans)."""
    open_at: int | None = None  # brace: index of the open section's header
    seen_header = False  # ini: a section has started
    for i, line in enumerate(lines):
        if line.kind is _Kind.HEADER:
            if open_at is not None:
                outer = lines[open_at].name
                raise ConfParseError(
                    f"section {line.name!r} starts inside section {outer!r} "
                    f"(line {open_at + 1}): missing '}}'?",
                    path,
                    i + 1,
                )
            if syntax == "brace":
                open_at = i
            seen_header = True
        elif line.kind is _Kind.CLOSE:
            if open_at is None:
                raise ConfParseError("'}' without an open section", path, i + 1)
            open_at = None
        elif line.kind is _Kind.ENTRY and (
            open_at is None if syntax == "brace" else not seen_header
        ):
            raise ConfParseError(f"key {line.name!r} outside any section", path, i + 1)
    if open_at is not None:
        raise ConfParseError(
            f"section {lines[open_at].name!r} is never closed (missing '}}')", path, open_at + 1
        )


class Document:
    """A Chrystoki.conf (``brace``) or crystoki.ini (``ini``) file, kept byte for byte.

    Build one with :meth:`parse` or :meth:`new`; see the module docstring for the
    rules on duplicates and on where new lines go.
    """

    def __init__(
        self, syntax: Syntax = "brace", newline: Newline = "\n", path: str | None = None
    ) -> None:
        """An empty document; prefer :meth:`new` or :meth:`parse`."""
        if syntax not in SYNTAXES:
            raise ValueError(f"syntax must be one of {SYNTAXES}, not {syntax!r}")
        if newline not in NEWLINES:
            raise ValueError(f"newline must be one of {NEWLINES}, not {newline!r}")
        self.syntax: Syntax = syntax
        #: Line ending of lines the document adds (the file's prevailing one).
        self.newline: Newline = newline
        #: Whether the file starts with a UTF-8 byte order mark (kept on output).
        self.bom: bool = False
        #: Where the document came from, for messages; not used for I/O.
        self.path: str | None = path
        self._lines: list[_Line] = []

    # -- construction and output ------------------------------------------------

    @classmethod
    def new(cls, syntax: Syntax = "brace", newline: Newline = "\n") -> Document:
        """An empty document of the given syntax and line ending."""
        return cls(syntax, newline)

    @classmethod
    def parse(cls, data: bytes | str, path: str | None = None) -> Document:
        """Parse a whole file; the syntax is detected from its first section header.

        ``path`` only labels errors.  Raises :class:`~hacli.errors.ConfParseError`
        (with the 1-based line number) for anything that is not a valid file.
        """
        text = _decode(data, path) if isinstance(data, bytes) else data
        bom = text.startswith(_BOM)
        if bom:
            text = text[1:]
        pairs = _split_lines(text)
        syntax = _detect_syntax(pairs, path)
        lines = []
        for number, (body, eol) in enumerate(pairs, start=1):
            try:
                line = _classify(body, syntax)
            except _LineError as e:
                raise ConfParseError(str(e), path, number) from None
            line.eol = eol
            lines.append(line)
        _check_structure(lines, syntax, path)
        doc = cls(syntax, _prevailing_newline(lines), path)
        doc.bom = bom
        doc._lines = lines
        return doc

    def dumps(self) -> bytes:
        """The file's bytes: identical to what was parsed when nothing changed."""
        body = "".join(line.render() + line.eol for line in self._lines)
        return ((_BOM if self.bom else "") + body).encode("utf-8")

    def copy(self) -> Document:
        """An independent copy (edits to one do not show in the other)."""
        return _copy.deepcopy(self)

    def __repr__(self) -> str:
        return f"<Document {self.syntax} {len(self._lines)} lines path={self.path!r}>"

    # -- reading ----------------------------------------------------------------

    def sections(self) -> list[str]:
        """Section names in file order, spelled as in the file (a repeated one once)."""
        seen: dict[str, str] = {}
        for span in self._spans():
            seen.setdefault(span.name.casefold(), span.name)
        return list(seen.values())

    def has_section(self, section: str) -> bool:
        """Whether the section exists (case-insensitive)."""
        return bool(self._find(section))

    def keys(self, section: str) -> list[str]:
        """The section's keys in file order (each once); [] if there is no such section."""
        return [key for key, _ in self.items(section)]

    def items(self, section: str) -> list[tuple[str, str]]:
        """(key, value) pairs in file order; a repeated key once, with its last value."""
        merged: dict[str, tuple[str, str]] = {}
        for i in self._entries(section):
            line = self._lines[i]
            merged[line.name.casefold()] = (line.name, line.value)
        return list(merged.values())

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The value of ``key`` in ``section`` (last occurrence), or ``default``."""
        found = self._key_lines(section, key)
        return self._lines[found[-1]].value if found else default

    def line_of(self, section: str, key: str | None = None) -> int | None:
        """1-based line of the section's (first) header or of the key's last occurrence."""
        if key is None:
            spans = self._find(section)
            return spans[0].header + 1 if spans else None
        found = self._key_lines(section, key)
        return found[-1] + 1 if found else None

    # -- editing ----------------------------------------------------------------

    def set(self, section: str, key: str, value: str) -> None:
        """Set a value: rewrite the key's line, or add the key, or add the section.

        Raises :class:`~hacli.errors.ConfValueError` for a key or value the
        syntax cannot hold (line breaks, ``;`` in brace values, surrounding
        blanks that would not read back, ...).
        """
        self._check_key(key)
        self._check_value(value)
        spans = self._find(section)
        if not spans:
            self._add_section(section, [(key, value)])
            return
        found = self._key_lines(section, key)
        if found:
            line = _copy.copy(self._lines[found[-1]])
            line.value = value
            self._lines[found[-1]] = self._verified(line, key, value)
            return
        span = spans[-1]
        at = span.entries[-1] + 1 if span.entries else span.header + 1
        self._insert(at, [self._new_entry(key, value, span)])

    def add_section(self, section: str) -> None:
        """Append an empty section at the end of the file (nothing if it exists)."""
        if not self._find(section):
            self._add_section(section, [])

    def rename_key(self, section: str, old: str, new: str) -> bool:
        """Rename a key where it stands (value, spacing and comment kept); False if absent.

        Every occurrence of a repeated key is renamed, so the effective value
        moves with it.  Renaming onto another key that exists raises
        :class:`~hacli.errors.ConfValueError` rather than create a duplicate.
        """
        self._check_key(new)
        found = self._key_lines(section, old)
        if not found:
            return False
        if new.casefold() != old.casefold() and self._key_lines(section, new):
            raise ConfValueError(f"cannot rename {old!r} to {new!r}: {new!r} exists already")
        for i in found:
            line = _copy.copy(self._lines[i])
            indent = line.prefix[: len(line.prefix) - len(line.prefix.lstrip())]
            line.prefix = indent + new + line.prefix[len(indent) + len(line.name) :]
            line.name = new
            self._lines[i] = self._verified(line, new, line.value)
        return True

    def remove_key(self, section: str, key: str) -> bool:
        """Delete the key's line (every occurrence); False if it was not there."""
        found = self._key_lines(section, key)
        for i in reversed(found):
            del self._lines[i]
        return bool(found)

    def remove_section(self, section: str) -> bool:
        """Delete the section's lines and the blank lines after it; False if absent.

        Comments outside the section (before its header, or in an INI file the
        comments directly above the next header) are left alone: they usually
        describe what follows them.
        """
        spans = self._find(section)
        for span in reversed(spans):
            end = span.end
            if self.syntax == "ini" and end < len(self._lines):
                while end - 1 > span.header and self._lines[end - 1].kind is _Kind.COMMENT:
                    end -= 1
            while end < len(self._lines) and self._lines[end].kind is _Kind.BLANK:
                end += 1
            del self._lines[span.header : end]
        return bool(spans)

    # -- internals ----------------------------------------------------------------

    def _spans(self) -> list[_Span]:
        spans: list[_Span] = []
        current: _Span | None = None
        for i, line in enumerate(self._lines):
            if line.kind is _Kind.HEADER:
                if current is not None:  # ini: a header ends the previous section
                    current.end = i
                current = _Span(line.name, i, len(self._lines))
                spans.append(current)
            elif line.kind is _Kind.CLOSE and current is not None:
                current.end = i + 1
                current = None
            elif line.kind is _Kind.ENTRY and current is not None:
                current.entries.append(i)
        return spans

    def _find(self, section: str) -> list[_Span]:
        folded = section.casefold()
        return [span for span in self._spans() if span.name.casefold() == folded]

    def _entries(self, section: str) -> list[int]:
        return [i for span in self._find(section) for i in span.entries]

    def _key_lines(self, section: str, key: str) -> list[int]:
        folded = key.casefold()
        return [i for i in self._entries(section) if self._lines[i].name.casefold() == folded]

    def _insert(self, at: int, new: list[_Line]) -> None:
        for line in new:
            line.eol = self.newline
        if at > 0 and not self._lines[at - 1].eol:
            self._lines[at - 1].eol = self.newline
        self._lines[at:at] = new

    def _layout(self, span: _Span | None) -> tuple[str, str, str, str]:
        """(indent, blanks before '=', blanks after '=', terminator) of a model entry."""
        candidates = (
            span.entries
            if span and span.entries
            else [i for i, line in enumerate(self._lines) if line.kind is _Kind.ENTRY]
        )
        if not candidates:
            return _DEFAULT_LAYOUT[self.syntax]
        model = self._lines[candidates[-1]]
        before, after = model.prefix.split("=", 1)
        indent = before[: len(before) - len(before.lstrip())]
        gap = before[len(before.rstrip()) :]
        # Brace: keep the blanks before ';' but never copy a trailing comment.
        term = model.suffix[: model.suffix.find(";") + 1] if self.syntax == "brace" else ""
        return indent, gap, after, term

    def _new_entry(self, key: str, value: str, span: _Span | None) -> _Line:
        indent, gap, after, term = self._layout(span)
        line = _Line(
            _Kind.ENTRY, name=key, prefix=f"{indent}{key}{gap}={after}", value=value, suffix=term
        )
        return self._verified(line, key, value)

    def _add_section(self, section: str, entries: list[tuple[str, str]]) -> None:
        self._check_section(section)
        header_text = f"{section} = {{" if self.syntax == "brace" else f"[{section}]"
        header = _classify(header_text, self.syntax)
        if header.kind is not _Kind.HEADER or header.name != section:
            raise ConfValueError(
                f"section name {section!r} cannot be written in {self.syntax} syntax"
            )
        new = []
        if self._lines and self._lines[-1].kind is not _Kind.BLANK and self._separates_sections():
            new.append(_Line(_Kind.BLANK))
        new.append(header)
        new += [self._new_entry(key, value, None) for key, value in entries]
        if self.syntax == "brace":
            new.append(_Line(_Kind.CLOSE, "}"))
        self._insert(len(self._lines), new)

    def _separates_sections(self) -> bool:
        """Whether the file puts a blank line before its (last) section header."""
        headers = [i for i, line in enumerate(self._lines) if line.kind is _Kind.HEADER]
        if not headers:
            return True  # only comments so far: keep them apart from the first section
        last = headers[-1]
        return last > 0 and self._lines[last - 1].kind is _Kind.BLANK

    def _verified(self, line: _Line, key: str, value: str) -> _Line:
        """Re-read the rendered line: refuse anything that would not read back the same."""
        try:
            again = _classify(line.render(), self.syntax)
        except _LineError:
            again = None
        if (
            again is None
            or again.kind is not _Kind.ENTRY
            or again.name.casefold() != key.casefold()
            or again.value != value
        ):
            raise ConfValueError(f"{key} = {value!r} cannot be written in {self.syntax} syntax")
        return line

    @staticmethod
    def _check_text(what: str, text: str) -> None:
        if any(c in text for c in "\r\n\0"):
            raise ConfValueError(f"{what} {text!r} contains a line break or NUL character")
        if text != text.strip():
            raise ConfValueError(f"{what} {text!r} has leading or trailing blanks")

    def _check_key(self, key: str) -> None:
        self._check_text("key", key)
        if not key or "=" in key:
            raise ConfValueError(f"invalid key {key!r} (empty or contains '=')")

    def _check_value(self, value: str) -> None:
        self._check_text("value", value)
        if self.syntax == "brace" and ";" in value:
            raise ConfValueError(
                f"value {value!r} contains ';', which Chrystoki.conf syntax cannot hold"
            )

    def _check_section(self, section: str) -> None:
        self._check_text("section name", section)
        forbidden = "={}" if self.syntax == "brace" else "[]"
        if not section or any(c in section for c in forbidden):
            raise ConfValueError(
                f"invalid section name {section!r} (empty or contains one of {forbidden!r})"
            )
        if self.syntax == "brace" and section.startswith("["):
            # `[x = {` reads as a malformed INI header: the file would no longer
            # parse (and the first header decides the syntax of the whole file)
            raise ConfValueError(
                f"invalid section name {section!r} (a Chrystoki.conf section cannot start "
                "with '[')"
            )


def _prevailing_newline(lines: list[_Line]) -> Newline:
    """The more common line ending (the first one's on a tie); "\\n" if none."""
    endings = [line.eol for line in lines if line.eol]
    if not endings:
        return "\n"
    crlf = endings.count("\r\n")
    if crlf * 2 == len(endings):
        return "\r\n" if endings[0] == "\r\n" else "\n"
    return "\r\n" if crlf * 2 > len(endings) else "\n"
