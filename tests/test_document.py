"""The lossless document: round trips, reads, minimal edits, parse errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacli.conf.document import Document
from hacli.errors import ConfParseError, ConfValueError

FIXTURES = Path(__file__).parent / "fixtures"
GOOD = sorted(p for p in FIXTURES.iterdir() if p.is_file())


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def lines(data: bytes) -> list[bytes]:
    """Physical lines with their endings (the BOM is not part of line 1)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    return re.findall(rb"[^\n]*\n|[^\n]+$", data)


def changed(old: bytes, new: bytes) -> list[tuple[int, bytes, bytes]]:
    a, b = lines(old), lines(new)
    assert len(a) == len(b), "line count changed"
    return [(i + 1, x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


# -- round trip and reading ----------------------------------------------------------


def test_corpus_is_not_trivial() -> None:
    names = {p.name for p in GOOD}
    assert len(GOOD) >= 10
    assert any(n.endswith(".ini") for n in names) and any(n.endswith(".conf") for n in names)


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_fixture_round_trip(path: Path) -> None:
    data = path.read_bytes()
    doc = Document.parse(data, str(path))
    assert doc.dumps() == data
    # Reading every value must not disturb anything either.
    for section in doc.sections():
        for key in doc.keys(section):
            doc.get(section, key)
    assert doc.dumps() == data


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_fixture_round_trip_as_str(path: Path) -> None:
    data = path.read_bytes()
    assert Document.parse(data.decode("utf-8")).dumps() == data


def test_syntax_and_newline_detection() -> None:
    assert Document.parse(fixture("unix_full.conf")).syntax == "brace"
    win = Document.parse(fixture("windows_crlf.ini"))
    assert (win.syntax, win.newline) == ("ini", "\r\n")
    assert Document.parse(fixture("windows_bom_lf.ini")).newline == "\n"
    empty = Document.parse(b"")
    assert (empty.syntax, empty.newline, empty.sections(), empty.dumps()) == (
        "brace",
        "\n",
        [],
        b"",
    )
    # Comments only: the file name is the tie-breaker.
    assert Document.parse(b"; nothing yet\r\n", "C:/crystoki.ini").syntax == "ini"
    assert Document.parse(b"# nothing yet\n", "/etc/Chrystoki.conf").syntax == "brace"


def test_reads_unix_full() -> None:
    doc = Document.parse(fixture("unix_full.conf"))
    assert doc.sections() == [
        "Chrystoki2",
        "Luna",
        "CardReader",
        "Misc",
        "LunaSA Client",
        "Secure Trusted Channel",
        "VirtualToken",
        "HASynchronize",
        "HAConfiguration",
    ]
    assert doc.get("lunasa client", "servername01") == "192.168.10.22"
    assert doc.get("VirtualToken", "VirtualToken00Members") == "1238063521005,1238063521006"
    assert doc.get("HAConfiguration", "reconnAtt") == "-1"
    assert doc.keys("HAConfiguration") == [
        "reconnAtt",
        "AutoReconnectInterval",
        "HAOnly",
        "haLogStatus",
        "haLogPath",
        "logLen",
    ]
    assert doc.get("HAConfiguration", "nope") is None
    assert doc.get("Nope", "reconnAtt", "dflt") == "dflt"
    assert doc.keys("Nope") == [] and doc.items("Nope") == []
    assert doc.has_section("haconfiguration") and not doc.has_section("HAConfig")
    assert doc.line_of("HAConfiguration") == 61
    assert doc.line_of("HAConfiguration", "haLogPath") == 66
    assert doc.line_of("HAConfiguration", "nope") is None and doc.line_of("Nope") is None


def test_reads_odd_spacing_and_comments() -> None:
    doc = Document.parse(fixture("unix_comments_odd_spacing.conf"))
    assert doc.get("Chrystoki2", "LibUNIX64") == "/usr/safenet/lunaclient/lib/libCryptoki2_64.so"
    assert doc.keys("Chrystoki2") == ["LibUNIX64"]  # the commented-out key is a comment
    assert doc.get("Misc", "ToolsDir") == "/usr/safenet/lunaclient/bin"
    assert doc.get("Misc", "ProtectedAuthenticationPathFlagStatus") == "0"
    assert doc.get("LunaSA Client", "ReceiveTimeout") == "20000"
    assert doc.get("LunaSA Client", "ServerName00") == "192.168.0.5"
    assert doc.get("LunaSA Client", "ServerHtl00") == ""
    assert doc.get("LunaSA Client", "ServerName01") == "192.168.0.6"
    assert doc.get("LunaSA Client", "ServerPort01") == "1792"
    assert doc.get("HASynchronize", "my ha group") == "1"
    assert doc.get("hacli", "Member00Environment") == (
        "P11_KIT_SERVER_ADDRESS=unix:path=/root/.local/share/hacli/lab/m0/socket"
    )
    assert doc.get("UnknownVendorSection", "Something With Spaces") == (
        "a value with spaces and = signs"
    )
    assert doc.get("UnknownVendorSection", "Url") == "https://example.com/#anchor"


def test_reads_windows() -> None:
    doc = Document.parse(fixture("windows_odd_spacing_nofinalnl.ini"))
    assert doc.sections() == ["Chrystoki2", "LunaSA Client", "VirtualToken", "HAConfiguration"]
    assert doc.get("Chrystoki2", "LibNT") == r"C:\Program Files\SafeNet\LunaClient\cryptoki.dll"
    assert doc.get("LunaSA Client", "ServerName00") == "hsm1.corp.local"
    assert doc.get("LunaSA Client", "ServerHtl00") == ""
    assert doc.get("LunaSA Client", "Value With;Semicolon") == "a;b;c"
    assert doc.get("VirtualToken", "VirtualToken00Label") == "win group"
    assert doc.get("HAConfiguration", "reconnAtt") == "3"


def test_bom_is_kept_and_not_part_of_the_first_name() -> None:
    doc = Document.parse(fixture("unix_bom_utf8.conf"))
    assert doc.bom and doc.sections()[0] == "Chrystoki2"
    assert doc.get("VirtualToken", "VirtualToken00Label") == "café-group"
    doc.set("VirtualToken", "VirtualToken00Label", "grüppe")
    assert doc.dumps().startswith(b"\xef\xbb\xbfChrystoki2 = {\n")
    assert Document.parse(doc.dumps()).get("VirtualToken", "VirtualToken00Label") == "grüppe"


def test_duplicates_last_one_wins() -> None:
    data = fixture("windows_duplicates.ini")
    doc = Document.parse(data)
    assert doc.sections() == ["VirtualToken"]  # the repeated section counts once
    assert doc.get("VirtualToken", "VirtualToken00Label") == "second"
    assert doc.items("virtualtoken") == [
        ("virtualtoken00label", "second"),
        ("VirtualToken00SN", "1"),
    ]
    assert doc.line_of("VirtualToken", "VIRTUALTOKEN00LABEL") == 3
    doc.set("VirtualToken", "VirtualToken00Label", "third")
    assert changed(data, doc.dumps()) == [
        (3, b"virtualtoken00label=second\r\n", b"virtualtoken00label=third\r\n")
    ]
    # A new key goes to the last of the same-named sections.
    doc.set("VirtualToken", "VirtualToken00Members", "1,2")
    assert lines(doc.dumps())[-1] == b"VirtualToken00Members=1,2\r\n"
    assert doc.remove_key("VirtualToken", "VirtualToken00Label")
    assert doc.get("VirtualToken", "VirtualToken00Label") is None
    assert b"label" not in doc.dumps().lower()


# -- edits --------------------------------------------------------------------------


def test_set_existing_changes_exactly_one_line() -> None:
    data = fixture("unix_full.conf")
    doc = Document.parse(data)
    doc.set("haconfiguration", "AUTORECONNECTINTERVAL", "120")
    assert changed(data, doc.dumps()) == [
        (63, b"   AutoReconnectInterval = 60;\n", b"   AutoReconnectInterval = 120;\n")
    ]
    doc.set("HAConfiguration", "AutoReconnectInterval", "60")
    assert doc.dumps() == data


@pytest.mark.parametrize(
    ("section", "key", "value", "before", "after"),
    [
        (
            "Misc",
            "ToolsDir",
            "/opt/bin",
            b"      ToolsDir   =    /usr/safenet/lunaclient/bin   ;\n",
            b"      ToolsDir   =    /opt/bin   ;\n",
        ),
        (
            "Misc",
            "ProtectedAuthenticationPathFlagStatus",
            "1",
            b"      ProtectedAuthenticationPathFlagStatus\t=\t0;\t\n",
            b"      ProtectedAuthenticationPathFlagStatus\t=\t1;\t\n",
        ),
        (
            "LunaSA Client",
            "ReceiveTimeout",
            "30000",
            b"   ReceiveTimeout  = 20000;      # milliseconds; also hacli's command timeout\n",
            b"   ReceiveTimeout  = 30000;      # milliseconds; also hacli's command timeout\n",
        ),
        (
            "LunaSA Client",
            "ServerHtl00",
            "5",
            b"   ServerHtl00 =;\n",
            b"   ServerHtl00 =5;\n",
        ),
        (
            "LunaSA Client",
            "ServerName00",
            "",
            b"   ServerName00 =192.168.0.5;\n",
            b"   ServerName00 =;\n",
        ),
        (
            "LunaSA Client",
            "ServerPort01",
            "1793",
            b"   ServerPort01 = 1792;;\n",
            b"   ServerPort01 = 1793;;\n",
        ),
    ],
)
def test_set_keeps_layout_of_the_line(
    section: str, key: str, value: str, before: bytes, after: bytes
) -> None:
    data = fixture("unix_comments_odd_spacing.conf")
    doc = Document.parse(data)
    doc.set(section, key.upper(), value)
    [(_, old, new)] = changed(data, doc.dumps())
    assert (old, new) == (before, after)
    assert Document.parse(doc.dumps()).get(section, key) == value


def test_set_existing_in_ini_keeps_crlf_and_spacing() -> None:
    data = fixture("windows_odd_spacing_nofinalnl.ini")
    doc = Document.parse(data)
    doc.set("LunaSA Client", "ServerName00", "hsm2.corp.local")
    doc.set("HAConfiguration", "reconnAtt", "-1")  # last line, no final newline
    assert changed(data, doc.dumps()) == [
        (
            6,
            b"ServerName00   =   hsm1.corp.local\t\r\n",
            b"ServerName00   =   hsm2.corp.local\t\r\n",
        ),
        (14, b"reconnAtt=3", b"reconnAtt=-1"),
    ]


def test_new_key_goes_to_end_of_section_with_its_indentation() -> None:
    data = fixture("unix_comments_odd_spacing.conf")
    doc = Document.parse(data)
    doc.set("Misc", "NewKey", "new value")
    a, b = lines(data), lines(doc.dumps())
    at = doc.line_of("Misc", "NewKey")
    assert at == 12 and b[at - 2].lstrip().startswith(b"ProtectedAuthentication")
    assert b[at - 1] == b"      NewKey\t=\tnew value;\n"  # copied from the last entry
    assert b[at] == b"   }\n"
    assert b[: at - 1] + b[at:] == a


def test_new_key_after_last_entry_not_after_trailing_comment() -> None:
    doc = Document.parse(b"Chrystoki2 = {\n\tA = 1;\n\t# B = 2;\n}\n")
    doc.set("Chrystoki2", "C", "3")
    assert doc.dumps() == b"Chrystoki2 = {\n\tA = 1;\n\tC = 3;\n\t# B = 2;\n}\n"


def test_new_key_in_empty_section_copies_layout_from_elsewhere() -> None:
    doc = Document.parse(b"A = {\n  X=1;\n}\nB = {\n}\n")
    doc.set("B", "Y", "2")
    assert doc.dumps() == b"A = {\n  X=1;\n}\nB = {\n  Y=2;\n}\n"
    doc = Document.parse(b"[A]\n  X = no\n[B]\n")
    doc.set("B", "Y", "2")
    assert doc.dumps() == b"[A]\n  X = no\n[B]\n  Y = 2\n"


def test_new_key_in_ini_section_stays_above_separating_blank_lines() -> None:
    data = fixture("windows_crlf.ini")
    doc = Document.parse(data)
    doc.set("CardReader", "LunaG5Slots", "0")
    b = lines(doc.dumps())
    at = doc.line_of("CardReader", "LunaG5Slots")
    assert b[at - 2 : at + 2] == [
        b"RemoteCommand=1\r\n",
        b"LunaG5Slots=0\r\n",
        b"\r\n",
        b"[Misc]\r\n",
    ]
    assert len(b) == len(lines(data)) + 1


def test_new_key_in_empty_ini_section_goes_after_header() -> None:
    doc = Document.parse(b"[A]\r\n; about A\r\n\r\n[B]\r\nx=1\r\n")
    doc.set("A", "k", "v")
    assert doc.dumps() == b"[A]\r\nk=v\r\n; about A\r\n\r\n[B]\r\nx=1\r\n"


def test_new_key_after_last_line_without_newline() -> None:
    data = fixture("unix_tabs_nofinalnl.conf")
    doc = Document.parse(data)
    doc.set("HAConfiguration", "HAOnly", "1")
    assert doc.dumps() == data[:-1] + b"\tHAOnly = 1;\n}"  # the missing newline stays missing
    ini = Document.parse(b"[A]\r\nx=1")
    ini.set("A", "y", "2")
    assert ini.dumps() == b"[A]\r\nx=1\r\ny=2\r\n"


def test_new_section_at_eof_brace_follows_file_habits() -> None:
    # unix_full separates sections with blank lines; unix_compact does not.
    for name, sep in [("unix_full.conf", b"\n"), ("unix_compact.conf", b"")]:
        data = fixture(name)
        doc = Document.parse(data)
        doc.set("hacli", "DefaultLibrary", "/usr/lib/softhsm/libsofthsm2.so")
        assert doc.dumps() == data + sep + (
            b"hacli = {\n   DefaultLibrary = /usr/lib/softhsm/libsofthsm2.so;\n}\n"
        )
        assert doc.line_of("hacli") == len(lines(data)) + 1 + len(sep)


def test_new_section_at_eof_ini_crlf() -> None:
    data = fixture("windows_crlf.ini")
    doc = Document.parse(data)
    doc.set("hacli", "LabDir", r"C:\lab")
    assert doc.dumps() == data + b"\r\n[hacli]\r\nLabDir=C:\\lab\r\n"


def test_new_section_without_final_newline() -> None:
    data = fixture("windows_odd_spacing_nofinalnl.ini")
    doc = Document.parse(data)
    doc.set("New", "K", "V")
    assert doc.dumps() == data + b"\r\n[New]\r\nK=V\r\n"
    data = fixture("unix_tabs_nofinalnl.conf")
    doc = Document.parse(data)
    doc.add_section("Empty")
    doc.add_section("EMPTY")  # exists already: nothing
    assert doc.dumps() == data + b"\nEmpty = {\n}\n"


def test_crlf_stays_crlf_for_every_edit() -> None:
    doc = Document.parse(fixture("windows_crlf.ini"))
    doc.set("HAConfiguration", "reconnAtt", "10")
    doc.set("HAConfiguration", "Extra", "1")
    doc.set("NewSection", "A", "b")
    doc.remove_key("Luna", "PEDTimeout2")
    doc.remove_section("CardReader")
    out = doc.dumps()
    assert out.count(b"\n") == out.count(b"\r\n") and out.endswith(b"\r\n")


def test_mixed_newlines_each_line_keeps_its_own() -> None:
    data = fixture("unix_mixed_newlines.conf")
    doc = Document.parse(data)
    doc.set("Misc", "ToolsDir", "/bin")
    doc.set("Misc", "Mixed", "no")
    assert changed(data, doc.dumps()) == [
        (5, b"   ToolsDir = /usr/safenet/lunaclient/bin;\r\n", b"   ToolsDir = /bin;\r\n"),
        (6, b"   Mixed = yes;\n", b"   Mixed = no;\n"),
    ]


def test_default_layout_of_new_documents() -> None:
    brace = Document.new()
    brace.set("HAConfiguration", "reconnAtt", "-1")
    brace.set("HAConfiguration", "AutoReconnectInterval", "60")
    assert brace.dumps() == (
        b"HAConfiguration = {\n   reconnAtt = -1;\n   AutoReconnectInterval = 60;\n}\n"
    )
    ini = Document.new("ini", "\r\n")
    ini.set("HAConfiguration", "reconnAtt", "-1")
    ini.set("Other", "a", "b")
    assert ini.dumps() == b"[HAConfiguration]\r\nreconnAtt=-1\r\n[Other]\r\na=b\r\n"
    assert Document.parse(ini.dumps()).items("other") == [("a", "b")]
    with pytest.raises(ValueError):
        Document.new("yaml")
    with pytest.raises(ValueError):
        Document.new("brace", "\r")


def test_remove_key_removes_one_line() -> None:
    data = fixture("unix_full.conf")
    doc = Document.parse(data)
    at = doc.line_of("LunaSA Client", "ServerHtl01")
    assert doc.remove_key("lunasa client", "serverhtl01")
    a = lines(data)
    assert lines(doc.dumps()) == a[: at - 1] + a[at:]
    assert not doc.remove_key("LunaSA Client", "ServerHtl01")
    assert not doc.remove_key("Nope", "x")


def test_rename_key_keeps_the_line_layout() -> None:
    data = fixture("unix_comments_odd_spacing.conf")
    doc = Document.parse(data)
    assert doc.rename_key("lunasa client", "RECEIVETIMEOUT", "CommandTimeout")
    assert changed(data, doc.dumps()) == [
        (
            15,
            b"   ReceiveTimeout  = 20000;      # milliseconds; also hacli's command timeout\n",
            b"   CommandTimeout  = 20000;      # milliseconds; also hacli's command timeout\n",
        )
    ]
    assert doc.get("LunaSA Client", "CommandTimeout") == "20000"
    assert doc.get("LunaSA Client", "ReceiveTimeout") is None
    assert not doc.rename_key("LunaSA Client", "ReceiveTimeout", "X")
    with pytest.raises(ConfValueError, match="exists already"):
        doc.rename_key("LunaSA Client", "CommandTimeout", "ServerName00")
    with pytest.raises(ConfValueError):
        doc.rename_key("LunaSA Client", "CommandTimeout", "#x")
    assert doc.get("LunaSA Client", "CommandTimeout") == "20000"
    doc.rename_key("LunaSA Client", "CommandTimeout", "commandtimeout")  # a change of case
    assert doc.keys("LunaSA Client")[0] == "commandtimeout"


def test_rename_repeated_key_moves_the_effective_value() -> None:
    doc = Document.parse(fixture("windows_duplicates.ini"))
    assert doc.rename_key("VirtualToken", "VirtualToken00Label", "VirtualToken01Label")
    assert doc.get("VirtualToken", "VirtualToken01Label") == "second"
    assert doc.get("VirtualToken", "VirtualToken00Label") is None


def test_remove_section_brace() -> None:
    doc = Document.parse(fixture("unix_full.conf"))
    assert doc.remove_section("hasynchronize")
    assert not doc.remove_section("HASynchronize")
    text = doc.dumps().decode()
    assert "VirtualTokenActiveRecovery = activeBasic;\n}\n\nHAConfiguration = {" in text
    doc.remove_section("HAConfiguration")  # the last one
    assert doc.dumps().endswith(b"   VirtualTokenActiveRecovery = activeBasic;\n}\n\n")
    assert Document.parse(doc.dumps()).sections()[-1] == "VirtualToken"


def test_remove_section_ini_keeps_comments_of_the_next_section() -> None:
    doc = Document.parse(b"[A]\r\nx=1\r\n\r\n; about B\r\n[B]\r\ny=2\r\n")
    assert doc.remove_section("a")
    assert doc.dumps() == b"; about B\r\n[B]\r\ny=2\r\n"
    assert doc.remove_section("B")
    assert doc.dumps() == b"; about B\r\n"


def test_copy_is_independent() -> None:
    doc = Document.parse(fixture("unix_full.conf"))
    other = doc.copy()
    other.set("HAConfiguration", "reconnAtt", "3")
    assert doc.get("HAConfiguration", "reconnAtt") == "-1"
    assert other.get("HAConfiguration", "reconnAtt") == "3"


@pytest.mark.parametrize(
    ("syntax", "section", "key", "value", "fragment"),
    [
        ("brace", "Misc", "K", "a;b", "';'"),
        ("brace", "Misc", "K", "a\nb", "line break"),
        ("ini", "Misc", "K", "a\r\nb", "line break"),
        ("ini", "Misc", "K\n", "v", "line break"),
        ("brace", "Misc", "K", " padded", "blanks"),
        ("ini", "Misc", "K", "padded\t", "blanks"),
        ("brace", "Misc", "a=b", "v", "'='"),
        ("brace", "Misc", "", "v", "invalid key"),
        ("brace", "Misc", "#K", "v", "cannot be written"),
        ("ini", "Misc", ";K", "v", "cannot be written"),
        ("ini", "Misc", "[K", "v", "cannot be written"),
        ("brace", "Misc", "K", "{", "cannot be written"),
        ("brace", "New = {", "K", "v", "section name"),
        ("ini", "New]", "K", "v", "section name"),
        ("ini", "", "K", "v", "section name"),
        ("brace", "#New", "K", "v", "section name"),
        ("brace", "[New", "K", "v", "cannot start with '['"),
    ],
)
def test_unrepresentable_values_are_refused(
    syntax: str, section: str, key: str, value: str, fragment: str
) -> None:
    data = b"Misc = {\n   A = 1;\n}\n" if syntax == "brace" else b"[Misc]\nA=1\n"
    doc = Document.parse(data)
    with pytest.raises(ConfValueError, match=re.escape(fragment)):
        doc.set(section, key, value)
    assert doc.dumps() == data


def test_a_new_brace_file_never_starts_with_an_ini_header() -> None:
    # found by tests/test_fuzz.py: `[ = {` as the first header made the file
    # read as a malformed crystoki.ini, so it no longer parsed
    doc = Document.new("brace")
    with pytest.raises(ConfValueError, match="cannot start with"):
        doc.set("[", "{", "")
    assert doc.dumps() == b""


def test_semicolons_are_fine_in_ini_values() -> None:
    doc = Document.new("ini")
    doc.set("Misc", "Path", "C:\\a;C:\\b")
    assert Document.parse(doc.dumps()).get("Misc", "Path") == "C:\\a;C:\\b"


# -- parse errors -------------------------------------------------------------------

BAD = {
    "unclosed_brace.conf": (4, "never closed"),
    "stray_close.conf": (4, "'}' without an open section"),
    "key_outside_section.conf": (2, "key 'ReceiveTimeout' outside any section"),
    "key_outside_section.ini": (2, "key 'LibNT' outside any section"),
    "neither.conf": (3, "expected 'Key = Value;'"),
    "neither.ini": (4, "expected 'Key=Value'"),
    "missing_semicolon.conf": (3, "missing ';'"),
    "nested_section.conf": (3, "starts inside section 'VirtualToken'"),
    "text_after_semicolon.conf": (3, "unexpected text after ';'"),
    "bad_ini_header.ini": (3, "malformed section header"),
    "binary_nul.conf": (3, "not a text file"),
    "latin1.ini": (3, "not a text file"),
}


def test_every_bad_fixture_is_listed() -> None:
    assert {p.name for p in (FIXTURES / "bad").iterdir()} == set(BAD)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_fixture_raises_with_line(name: str) -> None:
    line, fragment = BAD[name]
    path = str(FIXTURES / "bad" / name)
    with pytest.raises(ConfParseError) as info:
        Document.parse((FIXTURES / "bad" / name).read_bytes(), path)
    assert (info.value.path, info.value.line) == (path, line)
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"\x00\x01\x02", 1),
        (b"\xff\xfe[\x00A\x00]\x00", 1),  # UTF-16
        (b"A = {\n}\n\x89PNG\r\n", 3),
    ],
)
def test_binary_garbage(data: bytes, line: int) -> None:
    with pytest.raises(ConfParseError, match="not a text file") as info:
        Document.parse(data)
    assert info.value.line == line


def test_ini_empty_header_and_brace_empty_key() -> None:
    with pytest.raises(ConfParseError, match="empty section name"):
        Document.parse(b"[]\n")
    with pytest.raises(ConfParseError, match="missing key name"):
        Document.parse(b"A = {\n = 1;\n}\n")


# -- generated documents ------------------------------------------------------------

_NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_ ]{0,8}[A-Za-z0-9]|[A-Za-z]", fullmatch=True)
_VALUE_CHARS = "abcXYZ019 /\\.:,=#-_é@"
_BRACE_VALUE = st.text(_VALUE_CHARS, max_size=12).map(str.strip)
_INI_VALUE = st.text(_VALUE_CHARS + ";[]{}", max_size=12).map(str.strip)
_INDENT = st.sampled_from(["", " ", "   ", "\t", "  \t"])
_GAP = st.sampled_from(["", " ", "  ", "\t"])


def _value(syntax: str) -> st.SearchStrategy[str]:
    return _BRACE_VALUE if syntax == "brace" else _INI_VALUE


@st.composite
def documents(draw: st.DrawFn) -> tuple[bytes, str, dict[str, tuple[str, dict]]]:
    """(file bytes, syntax, model).

    The model maps folded section name -> (name, {folded key: (key, value)}).
    """
    syntax = draw(st.sampled_from(["brace", "ini"]))
    style = draw(st.sampled_from(["\n", "\r\n", "mixed"]))
    comments = ["# c", "; c=1", "   # indented = {"] + (["// c;"] if syntax == "brace" else [])
    noise = st.one_of(st.sampled_from(["", "  ", "\t"]), st.sampled_from(comments))
    out: list[str] = draw(st.lists(noise, max_size=2))
    model: dict[str, tuple[str, dict]] = {}
    for name in draw(st.lists(_NAME, max_size=4, unique_by=str.casefold)):
        if syntax == "brace":
            out.append(draw(st.sampled_from([f"{name} = {{", f"{name}={{", f"  {name}  = {{ # h"])))
        else:
            out.append(draw(st.sampled_from([f"[{name}]", f"[ {name} ]", f"[{name}] ; h"])))
        entries: dict[str, tuple[str, str]] = {}
        for key in draw(st.lists(_NAME, max_size=4, unique_by=str.casefold)):
            value = draw(_value(syntax))
            indent, g1, g2 = draw(_INDENT), draw(_GAP), draw(_GAP)
            if syntax == "brace":
                tail = draw(st.sampled_from([";", " ;", ";  # t", "; // t;", ";\t"]))
            else:
                tail = draw(st.sampled_from(["", " ", "\t"]))
            out.append(f"{indent}{key}{g1}={g2}{value}{tail}")
            entries[key.casefold()] = (key, value)
            out += draw(st.lists(noise, max_size=1))
        if syntax == "brace":
            out.append(draw(st.sampled_from(["}", "  }", "} # end"])))
        out += draw(st.lists(noise, max_size=2))
        model[name.casefold()] = (name, entries)
    ends = [draw(st.sampled_from(["\n", "\r\n"])) if style == "mixed" else style for _ in out]
    text = "".join(a + b for a, b in zip(out, ends, strict=True))
    if out and draw(st.booleans()):
        text = text[: -len(ends[-1])]  # no final newline
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode(), syntax, model


def assert_model(doc: Document, model: dict[str, tuple[str, dict]]) -> None:
    assert [s.casefold() for s in doc.sections()] == list(model)
    for name, entries in model.values():
        assert doc.sections()[list(model).index(name.casefold())] == name
        assert doc.items(name) == list(entries.values())


@settings(max_examples=300, deadline=None)
@given(documents())
def test_generated_documents_round_trip(generated: tuple[bytes, str, dict]) -> None:
    data, syntax, model = generated
    doc = Document.parse(data)
    assert doc.dumps() == data
    if model:
        assert doc.syntax == syntax
    assert_model(doc, model)


def _not_in(taken: dict) -> Callable[[str], bool]:
    names = set(taken)
    return lambda name: name.casefold() not in names


def _same_but_final_newline(old: list[bytes], new: list[bytes], newline: bytes) -> bool:
    """new == old, except that old's last line may have gained the missing newline."""
    if old == new:
        return True
    return bool(old) and old[:-1] == new[:-1] and new[-1] == old[-1] + newline


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), st.data())
def test_random_edits_touch_only_their_lines(
    generated: tuple[bytes, str, dict], data: st.DataObject
) -> None:
    raw, _, model = generated
    doc = Document.parse(raw)
    syntax = doc.syntax  # a file without sections is brace whatever the generator meant
    nl = doc.newline.encode()
    for _ in range(data.draw(st.integers(1, 8), label="n_ops")):
        old = doc.dumps()
        a = lines(old)
        existing = [name for name, _ in model.values()]
        choices = ["new_section"] + (
            ["set", "new_key", "remove_key", "remove_section"] if existing else []
        )
        op = data.draw(st.sampled_from(choices), label="op")
        if op == "new_section":
            section = data.draw(_NAME.filter(_not_in(model)), label="section")
            key, value = data.draw(_NAME, label="key"), data.draw(_value(syntax), label="value")
            doc.set(section, key, value)
            model[section.casefold()] = (section, {key.casefold(): (key, value)})
            b = lines(doc.dumps())
            assert _same_but_final_newline(a, b[: len(a)], nl)
            added = b[len(a) :]
            assert len(added) - (syntax == "brace") - (added[0].strip() == b"") == 2
            assert all(line.endswith(nl) for line in added)
            assert doc.line_of(section) == len(b) - (syntax == "brace") - 1
        else:
            section = data.draw(st.sampled_from(existing), label="section")
            folded = section.casefold()
            entries = model[folded][1]
            # Exercise case-insensitive look-ups by sometimes using another spelling.
            spelled = data.draw(st.sampled_from([section, section.swapcase()]), label="spelling")
            if op == "set" and entries:
                key = data.draw(st.sampled_from([k for k, _ in entries.values()]), label="key")
                value = data.draw(_value(syntax), label="value")
                at = doc.line_of(section, key)
                doc.set(spelled, key.upper(), value)
                entries[key.casefold()] = (key, value)
                diff = changed(old, doc.dumps())
                assert [i for i, _, _ in diff] in ([], [at])
            elif op in ("set", "new_key"):
                key = data.draw(_NAME.filter(_not_in(entries)), label="key")
                value = data.draw(_value(syntax), label="value")
                last = max(
                    [doc.line_of(section, k) for k, _ in entries.values()] + [doc.line_of(section)]
                )
                doc.set(spelled, key, value)
                entries[key.casefold()] = (key, value)
                b = lines(doc.dumps())
                at = doc.line_of(section, key)
                assert at == last + 1  # right after the section's last entry (or header)
                assert b[at - 1].endswith(nl)
                assert _same_but_final_newline(a, b[: at - 1] + b[at:], nl)
            elif op == "remove_key" and entries:
                key = data.draw(st.sampled_from([k for k, _ in entries.values()]), label="key")
                at = doc.line_of(section, key)
                assert doc.remove_key(spelled, key)
                del entries[key.casefold()]
                assert lines(doc.dumps()) == a[: at - 1] + a[at:]
            elif op == "remove_section":
                at = doc.line_of(section)
                assert doc.remove_section(spelled)
                del model[folded]
                b = lines(doc.dumps())
                gone = len(a) - len(b)
                assert gone >= 1 + len(entries) + (syntax == "brace")
                assert b == a[: at - 1] + a[at - 1 + gone :]
        again = Document.parse(doc.dumps())
        assert again.dumps() == doc.dumps()
        assert again.bom == doc.bom
        if model:  # with no section left, nothing tells the syntax any more
            assert again.syntax == doc.syntax
        assert_model(again, model)
