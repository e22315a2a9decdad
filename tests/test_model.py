"""The typed HA model built from documents: defaults, members' modules, errors."""

from __future__ import annotations

import pytest
from clihelpers import EXAMPLE, run

from hacli.conf.document import Document
from hacli.conf.model import load_config
from hacli.conf.model_types import GroupConf, HASettings, MemberLocation, number_slots
from hacli.errors import ConfFileError


def config_of(text: str, path: str = "/x/Chrystoki.conf"):  # type: ignore[no-untyped-def]
    return load_config(Document.parse(text.encode(), path), path)


def test_defaults_come_from_the_spec() -> None:
    assert config_of("Misc = {\n}\n").settings == HASettings()


def test_multipart_journal_bytes_from_hacli_section() -> None:
    assert HASettings().multipart_journal_bytes == 1 << 20  # 1 MiB unless the file says
    config = config_of("hacli = {\n   MultipartJournalBytes = 65536;\n}\n")
    assert config.settings.multipart_journal_bytes == 65536
    assert config_of("hacli = {\n   multipartjournalbytes = 0;\n}\n"
                     ).settings.multipart_journal_bytes == 0


def test_members_modules_and_luna_fallback() -> None:
    config = config_of(
        "Chrystoki2 = {\n   LibUNIX64 = /opt/luna/libCryptoki2_64.so;\n}\n"
        "VirtualToken = {\n   VirtualToken00Label = g;\n   VirtualToken00Members = a,b;\n}\n"
        "hacli = {\n   Member00Serial = a;\n   Member00Library = /lib/p11.so;\n"
        "   Member00Environment = P11_KIT_SERVER_ADDRESS=unix:path=/s=1, X = y;\n}\n")
    assert config.location("a") == MemberLocation(
        "a", "/lib/p11.so", {"P11_KIT_SERVER_ADDRESS": "unix:path=/s=1", "X": "y"})
    assert config.location("b") == MemberLocation("b", "/opt/luna/libCryptoki2_64.so")
    assert config.groups[0].serial == "1a"
    explicit = config_of("hacli = {\n   DefaultLibrary = /lib/soft.so;\n}\n"
                         "Chrystoki2 = {\n   LibUNIX = /opt/l.so;\n}\n")
    assert explicit.location("z") == MemberLocation("z", "/lib/soft.so")
    assert config_of("Misc = {\n}\n").location("z") is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("hacli = {\n   Member00Serial = a;\n}\n", "/x/Chrystoki.conf:2: [hacli] Member00"),
        ("hacli = {\n   Member00Serial = a;\n   Member00Library = /l;\n"
         "   Member00Environment = novalue;\n}\n", ":4: [hacli] Member00Environment"),
        ("VirtualToken = {\n   VirtualToken00Members = a;\n}\n", "no VirtualToken00Label"),
        ("HAConfiguration = {\n   AutoReconnectInterval = 0;\n}\n",
         "/x/Chrystoki.conf:2: [HAConfiguration] AutoReconnectInterval"),
        ("hacli = {\n   LabDir = ;\n   MemberConcurrency = 0;\n}\n",
         "/x/Chrystoki.conf:3: [hacli] MemberConcurrency = '0' is invalid; allowed: "
         "an integer 1..64"),
        ("hacli = {\n   MemberConcurrency = many;\n}\n", ":2: [hacli] MemberConcurrency"),
        ("hacli = {\n   LabDir = /l;\n   MultipartJournalBytes = -5;\n}\n",
         "/x/Chrystoki.conf:3: [hacli] MultipartJournalBytes"),
    ],
)
def test_bad_values_name_where(text: str, needle: str) -> None:
    with pytest.raises(ConfFileError) as err:
        config_of(text)
    assert needle in str(err.value)


def test_member_concurrency_comes_from_hacli_section() -> None:
    """Calls at once per member connection where the client allows it: default 4."""
    assert HASettings().member_concurrency == 4
    assert config_of("Misc = {\n}\n").settings.member_concurrency == 4
    for value in (1, 16, 64):
        text = f"hacli = {{\n   MemberConcurrency = {value};\n}}\n"
        assert config_of(text).settings.member_concurrency == value


def test_ha_status_explains_unreachable_members() -> None:
    # a missing module is a configuration error (exit 1), not a group that is down (4)
    res = run("--conf", str(EXAMPLE), "ha", "status", env={"XDG_STATE_HOME": "/nonexistent"})
    assert res.code == 1
    assert "libCryptoki2_64.so not found" in res.out
    assert res.err.startswith("Error: ") and len(res.err.splitlines()) == 1


def test_slots_are_numbered_members_first_then_one_per_group() -> None:
    groups = (GroupConf(0, "a", "1x", ("x", "y")), GroupConf(1, "b", "1z", ("z",)))
    assert [(n.slot_id, n.group, n.member) for n in number_slots(groups)] == [
        (1, "a", "x"), (2, "a", "y"), (3, "b", "z"), (4, "a", None), (5, "b", None)]
    assert [(n.slot_id, n.group, n.member) for n in number_slots(groups, ha_only=True)] == [
        (1, "a", None), (2, "b", None)]


def test_lab_dir_and_synchronize_flags_come_from_the_validated_model() -> None:
    config = config_of(
        "VirtualToken = {\n   VirtualToken00Label = g;\n   VirtualToken00Members = a;\n"
        "   VirtualToken01Label = h;\n   VirtualToken01Members = b;\n}\n"
        "HASynchronize = {\n   G = 1;\n   h = 0;\n}\nhacli = {\n   LabDir = /lab;\n}\n")
    assert config.lab_dir == "/lab"
    assert [(g.label, g.synchronize) for g in config.groups] == [("g", True), ("h", False)]
    assert config_of("Misc = {\n}\n").lab_dir is None
    with pytest.raises(ConfFileError, match=r":2: \[HASynchronize\] g = 'yes' is invalid"):
        config_of("HASynchronize = {\n   g = yes;\n}\n")
