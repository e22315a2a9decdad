"""`hacli hagroup ...` on real files: exactly the lines that must change, change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import EXAMPLE, assert_one_error_line, run, run_process

from hacli.conf import haedit, store

NO_HACONF = EXAMPLE.read_bytes()
assert b"HAConfiguration" not in NO_HACONF

WITH_HACONF = (
    b"Chrystoki2 = {\n   LibUNIX64 = /usr/lib/libCryptoki2_64.so;\n}\n"
    b"HAConfiguration = {\n\treconnAtt = 3;\n\tAutoReconnectInterval  =  120;\n"
    b"\thaLogStatus = disabled;\n}\n# trailing comment\n"
)

CRLF_INI = (
    b"; crystoki.ini from a Windows client\r\n[Chrystoki2]\r\nLibNT=C:\\Program Files\\"
    b"SafeNet\\LunaClient\\cryptoki.dll\r\n\r\n[VirtualToken]\r\nVirtualToken00Label=grp\r\n"
    b"VirtualToken00SN=1111\r\nVirtualToken00Members=111,222\r\n"
)


def write(tmp_path: Path, data: bytes, name: str = "Chrystoki.conf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_retry_adds_section_with_only_the_given_keys(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    res = run("--conf", str(conf), "hagroup", "retry", "--interval", "60", "--count", "0")
    assert res.code == 0, res.err
    assert "HA auto recovery: disabled" in res.out
    assert str(conf) in res.out
    old = NO_HACONF.decode().splitlines()
    new = conf.read_text().splitlines()
    assert new[: len(old)] == old  # nothing before changed
    added = [line.strip() for line in new[len(old):] if line.strip()]
    assert added == [
        "HAConfiguration = {", "AutoReconnectInterval = 60;", "reconnAtt = 0;", "}",
    ]


def test_retry_on_existing_section_changes_only_affected_lines(tmp_path: Path) -> None:
    conf = write(tmp_path, WITH_HACONF)
    res = run("--conf", str(conf), "hagroup", "retry", "--count", "unlimited")
    assert res.code == 0, res.err
    assert "retry forever, every 120 s" in res.out
    old, new = WITH_HACONF.decode().splitlines(), conf.read_text().splitlines()
    assert len(old) == len(new)
    diff = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert diff == [("\treconnAtt = 3;", "\treconnAtt = -1;")]


def test_interval_keeps_odd_spacing(tmp_path: Path) -> None:
    conf = write(tmp_path, WITH_HACONF)
    assert run("--conf", str(conf), "hagroup", "interval", "--interval", "300").code == 0
    assert b"\tAutoReconnectInterval  =  300;\n" in conf.read_bytes()


def test_crlf_ini_stays_crlf(tmp_path: Path) -> None:
    conf = write(tmp_path, CRLF_INI, "crystoki.ini")
    res = run("--conf", str(conf), "hagroup", "retry", "--interval", "90", "--count", "5")
    assert res.code == 0, res.err
    data = conf.read_bytes()
    assert data.startswith(CRLF_INI)
    tail = data[len(CRLF_INI):]
    assert b"[HAConfiguration]\r\n" in tail
    assert b"AutoReconnectInterval=90\r\n" in tail and b"reconnAtt=5\r\n" in tail
    assert b"\n" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "args",
    [
        ["--count", "501"],
        ["--count", "-2"],
        ["--count", "lots"],
        ["--interval", "59"],
        ["--interval", "1201"],
        ["--interval", "0", "--force"],
        ["--interval", "abc"],
        ["--interval", "60", "--count", "9999"],  # one bad value: nothing written
        [],
    ],
)
def test_retry_refuses_bad_values_and_leaves_file_untouched(
    tmp_path: Path, args: list[str]
) -> None:
    conf = write(tmp_path, WITH_HACONF)
    res = run("--conf", str(conf), "hagroup", "retry", *args)
    assert_one_error_line(res, 2)
    assert conf.read_bytes() == WITH_HACONF


def test_interval_outside_luna_range_needs_force(tmp_path: Path) -> None:
    conf = write(tmp_path, WITH_HACONF)
    res = run("--conf", str(conf), "hagroup", "retry", "--interval", "5", "--force")
    assert res.code == 0
    assert "Warning:" in res.err and "at least 60" not in res.out
    assert b"AutoReconnectInterval  =  5;" in conf.read_bytes()


def test_group_lifecycle_keeps_numbering_dense(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf), "hagroup"]
    assert run(*c, "creategroup", "--label", "second", "--members", "111,222").code == 0
    assert run(*c, "creategroup", "--label", "third", "--serial", "999",
               "--members", "333").code == 0
    assert run(*c, "addmember", "--group", "THIRD", "--serial", "444").code == 0
    assert run(*c, "removemember", "--group", "second", "--serial", "111").code == 0
    listing = json.loads(run(*c, "listgroups", "--json").out)
    assert [(g["label"], g["serial"], [m["serial"] for m in g["members"]])
            for g in listing["groups"]] == [
        ("myHAgroup", "1599447001", ["599447001", "78665001"]),
        ("second", "1111", ["222"]),
        ("third", "999", ["333", "444"]),
    ]
    assert run(*c, "deletegroup", "--label", "second").code == 0
    text = conf.read_text()
    assert "VirtualToken01Label = third;" in text
    assert "VirtualToken02" not in text
    assert "second" not in text  # its HASynchronize entry went with it
    groups = json.loads(run(*c, "listgroups", "--json").out)["groups"]
    assert [g["label"] for g in groups] == ["myHAgroup", "third"]
    assert all(g["synchronization"] for g in groups)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["creategroup", "--label", "myhagroup", "--members", "1"], "already exists"),
        (["creategroup", "--label", "x", "--members", "1,1"], "more than once"),
        (["addmember", "--group", "nosuch", "--serial", "1"], "no HA group"),
        (["addmember", "--group", "myHAgroup", "--serial", "599447001"], "more than once"),
        (["removemember", "--group", "myHAgroup", "--serial", "42"], "not a member"),
        (["deletegroup", "--label", "nosuch"], "myHAgroup"),
        (["creategroup", "--label", "bad;label", "--members", "1"], "not a valid"),
    ],
)
def test_group_errors_exit_2_and_change_nothing(tmp_path: Path, args: list[str],
                                                needle: str) -> None:
    conf = write(tmp_path, NO_HACONF)
    res = run("--conf", str(conf), "hagroup", *args)
    assert_one_error_line(res, 2)
    assert needle in res.err
    assert conf.read_bytes() == NO_HACONF


def test_creategroup_past_virtualtoken99_says_why(tmp_path: Path) -> None:
    # found by the configuration soak's design: the 101st group used to be
    # refused as "unknown HA key 'VirtualToken100Label'; did you mean VirtualToken10Label?"
    conf = write(tmp_path, NO_HACONF)
    with store.edit(conf) as doc:
        for n in range(1, 100):
            haedit.create_group(doc, f"g{n}", [str(5000 + n)])
    before = conf.read_bytes()
    res = run("--conf", str(conf), "hagroup", "creategroup", "--label", "one-too-many",
              "--members", "9999", "--no-transport-key")
    assert_one_error_line(res, 2)
    assert "VirtualToken99 is taken" in res.err and "at most 100 groups" in res.err
    assert conf.read_bytes() == before


def test_haonly_recoverymode_halog(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf), "hagroup"]
    assert "disabled" in run(*c, "haonly", "--show").out
    assert run(*c, "haonly", "--enable").code == 0
    assert json.loads(run(*c, "haonly", "--show", "--json").out) == {"ha_only": True}
    assert run(*c, "recoverymode", "--mode", "activeenhanced").code == 0
    assert "activeEnhanced" in run(*c, "recoverymode", "--show").out
    assert "VirtualTokenActiveRecovery = activeEnhanced;" in conf.read_text()
    res = run(*c, "halog", "--enable", "--path", "/var/log/ha", "--maxlength", "4096")
    assert res.code == 0, res.err
    shown = json.loads(run(*c, "halog", "--show", "--json").out)
    assert shown == {"ha_log": True, "ha_log_path": "/var/log/ha", "log_len": 4096,
                     "ha_log_format": "text"}
    assert run(*c, "halog", "--format", "json").code == 0
    assert "haLogFormat = json;" in conf.read_text()
    assert "HA log format: json" in run(*c, "halog", "--show").out
    before = conf.read_bytes()
    assert_one_error_line(run(*c, "halog", "--format", "xml"), 2)
    assert_one_error_line(run(*c, "halog", "--maxlength", "10"), 2)
    assert_one_error_line(run(*c, "haonly", "--enable", "--disable"), 2)
    assert_one_error_line(run(*c, "recoverymode", "--mode", "lazy"), 2)
    assert conf.read_bytes() == before


def test_listgroups_human(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    out = run("--conf", str(conf), "hagroup", "listgroups").out
    assert "HA auto recovery : enabled" in out
    assert "HA Group Label : myHAgroup" in out
    assert "599447001" in out and "78665001" in out


def test_installed_hacli_hagroup(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    res = run_process("--conf", str(conf), "hagroup", "retry", "--interval", "60", "--count", "0")
    assert res.code == 0, res.err
    assert "reconnAtt = 0;" in conf.read_text()
    res = run_process("--conf", str(conf), "hagroup", "retry", "--count", "x")
    assert_one_error_line(res, 2)


# -- one validation: what readers refuse, writers never write ---------------------

#: The example file with a second group that lists a member of the first one,
#: as `creategroup --members 599447001` wrote it before the write check.
SHARED_MEMBER = NO_HACONF + (
    b"VirtualToken = {\n   VirtualToken01Label = second;\n   VirtualToken01SN = 77;\n"
    b"   VirtualToken01Members = 599447001;\n}\n")


@pytest.mark.parametrize(
    ("setup", "args"),
    [
        ([], ["creategroup", "--label", "second", "--serial", "77", "--members", "599447001"]),
        ([], ["creategroup", "--label", "second", "--serial", "77", "--members",
              "5,599447001", "--no-transport-key"]),
        (["creategroup", "--label", "second", "--members", "5", "--no-transport-key"],
         ["addmember", "--group", "second", "--serial", "599447001"]),
    ],
)
def test_a_member_of_another_group_is_refused_at_write_time(
    tmp_path: Path, setup: list[str], args: list[str]
) -> None:
    conf = write(tmp_path, NO_HACONF)
    if setup:
        assert run("--conf", str(conf), "hagroup", *setup).code == 0
    before = conf.read_bytes()
    res = run("--conf", str(conf), "hagroup", *args)
    assert_one_error_line(res, 2)
    assert ("member 599447001 of group second is already a member of group myHAgroup"
            in res.err)
    assert "transport key" not in res.err  # refused before any member was touched
    assert conf.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Chrystoki.conf"]  # no lock file


@pytest.mark.parametrize(
    "args",
    [
        ["hagroup", "listgroups"],
        ["hagroup", "listgroups", "--no-probe", "--json"],
        ["ha", "status"],
        ["hagroup", "synchronize", "--dry-run"],
        ["hagroup", "haonly", "--show"],
        ["hagroup", "retry", "--count", "3"],
        ["conf", "show"],
    ],
)
def test_every_reader_refuses_a_member_in_two_groups_the_same_way(tmp_path: Path,
                                                                  args: list[str]) -> None:
    conf = write(tmp_path, SHARED_MEMBER)
    res = run("--conf", str(conf), *args, env={"HACLI_PIN": "unused"})
    assert_one_error_line(res, 1)
    line = SHARED_MEMBER.count(b"\n", 0, SHARED_MEMBER.index(b"VirtualToken01Members")) + 1
    assert res.err == (f"Error: {conf}:{line}: member 599447001 of group second is already a "
                       "member of group myHAgroup (a member belongs to one HA group)\n")
    assert conf.read_bytes() == SHARED_MEMBER


def test_conf_check_reports_a_member_in_two_groups_as_an_error(tmp_path: Path) -> None:
    conf = write(tmp_path, SHARED_MEMBER)
    res = run("--conf", str(conf), "conf", "check", "--json")
    assert res.code == 1
    found = json.loads(res.out)["findings"]
    assert [(f["severity"], f["key"]) for f in found] == [("error", "VirtualToken01Members")]


@pytest.mark.parametrize(
    ("group", "needle"),
    [
        (b"   VirtualToken00Label = lonely;\n", "group lonely has no members"),
        (b"   VirtualToken00Members = 1,2;\n", "has no VirtualToken00Label"),
        (b"   VirtualToken00Label = g;\n   VirtualToken00Members = ,,;\n",
         "group g has no members"),
        (b"   VirtualToken00Label = g;\n   VirtualToken00Members = 1,a b,{x;\n",
         "member 'a b' of group g is not a serial number"),
    ],
)
def test_a_malformed_group_entry_makes_readers_exit_1(tmp_path: Path, group: bytes,
                                                      needle: str) -> None:
    data = b"VirtualToken = {\n" + group + b"}\n"
    conf = write(tmp_path, data)
    for args in (["hagroup", "listgroups"], ["ha", "status"]):
        res = run("--conf", str(conf), *args)
        assert_one_error_line(res, 1)
        assert f"{conf}:2: " in res.err or f"{conf}:3: " in res.err
        assert needle in res.err
    assert run("--conf", str(conf), "conf", "check").code == 1
    assert conf.read_bytes() == data


def test_the_interval_rule_is_the_same_for_hagroup_and_conf_set(tmp_path: Path) -> None:
    conf = write(tmp_path, WITH_HACONF)
    c = ["--conf", str(conf)]
    by_hagroup = run(*c, "hagroup", "retry", "--interval", "59")
    by_conf_set = run(*c, "conf", "set", "HAConfiguration", "AutoReconnectInterval", "59")
    assert_one_error_line(by_hagroup, 2)
    assert by_conf_set.err == by_hagroup.err
    assert "outside Luna's 60..1200 s" in by_hagroup.err and "--force" in by_hagroup.err
    assert conf.read_bytes() == WITH_HACONF
    forced = run(*c, "hagroup", "interval", "--interval", "59", "--force")
    assert forced.code == 0 and "Warning:" in forced.err and "written with --force" in forced.err
    # once written with --force, other changes leave it alone (no new problem)
    assert run(*c, "hagroup", "retry", "--count", "4").code == 0
    assert b"AutoReconnectInterval  =  59;" in conf.read_bytes()


def test_synchronize_enable_disable_sets_hasynchronize(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf), "hagroup", "synchronize"]
    res = run(*c, "--group", "MYHAGROUP", "--disable")
    assert res.code == 0, res.err
    assert res.out.splitlines() == ["HA group myHAgroup: synchronization disabled",
                                    f"Wrote {conf}"]
    assert conf.read_bytes() == NO_HACONF.replace(b"myHAgroup = 1;", b"myHAgroup = 0;")
    listing = json.loads(run("--conf", str(conf), "hagroup", "listgroups", "--no-probe",
                             "--json").out)
    assert listing["groups"][0]["synchronization"] is False
    res = run(*c, "--group", "myHAgroup", "--enable", "--json")
    assert json.loads(res.out)["group"]["synchronization"] is True
    assert conf.read_bytes() == NO_HACONF
    # a group without an HASynchronize entry gets one
    assert run("--conf", str(conf), "conf", "set", "VirtualToken", "VirtualToken01Label",
               "other").code == 2  # no members: never written
    assert run("--conf", str(conf), "hagroup", "creategroup", "--label", "other",
               "--members", "42", "--no-transport-key").code == 0
    assert run("--conf", str(conf), "hagroup", "deletegroup", "--label", "myHAgroup").code == 0
    assert run(*c, "--group", "other", "--disable").code == 0
    assert "other = 0;" in conf.read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["--enable"],
        ["--group", "myHAgroup", "--enable", "--disable"],
        ["--group", "myHAgroup", "--enable", "--dry-run"],
        ["--group", "nosuch", "--disable"],
    ],
)
def test_synchronize_enable_disable_usage_errors(tmp_path: Path, args: list[str]) -> None:
    conf = write(tmp_path, NO_HACONF)
    assert_one_error_line(run("--conf", str(conf), "hagroup", "synchronize", *args), 2)
    assert conf.read_bytes() == NO_HACONF


def test_listgroups_numbers_group_slots_as_the_menu_does(tmp_path: Path) -> None:
    from hacli.conf.model import load_config
    from hacli.conf.store import load
    from hacli.engine import Engine

    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf)]
    assert run(*c, "hagroup", "creategroup", "--label", "second", "--members", "111",
               "--no-transport-key").code == 0

    def slot_ids() -> list[tuple[str, int]]:
        res = run(*c, "hagroup", "listgroups", "--no-probe", "--json")
        return [(g["label"], g["slot_id"]) for g in json.loads(res.out)["groups"]]

    assert slot_ids() == [("myHAgroup", 4), ("second", 5)]  # after the 3 member slots
    menu = run(*c, "ckdemo", input="52\n")
    assert "slot#4 - HA Virtual Card Slot\nslot#5 - HA Virtual Card Slot\n" in menu.out
    with Engine(load_config(load(conf))) as engine:
        assert [(s.group, s.slot_id) for s in engine.slots() if s.kind == "ha"] == slot_ids()
    assert "HA Group Slot ID : 5" in run(*c, "hagroup", "listgroups", "--no-probe").out
    assert run(*c, "hagroup", "haonly", "--enable").code == 0  # no member slots listed
    assert slot_ids() == [("myHAgroup", 1), ("second", 2)]


def test_listgroups_shows_needs_sync_only_with_a_pin(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    for args in (["hagroup", "listgroups"], ["hagroup", "listgroups", "--no-probe"]):
        res = run("--conf", str(conf), *args, env={"HACLI_PIN": None})  # type: ignore[dict-item]
        assert res.code == 0, res.err
        assert "Needs sync" not in res.out
TWO_GROUPS = NO_HACONF.replace(
    b"   VirtualToken00Members = 599447001,78665001;\n",
    b"   VirtualToken00Members = 599447001,78665001,333;\n"
    b"   VirtualToken00Standby = 333;\n"
    b"   VirtualToken01Label = other;\n   VirtualToken01SN = 1444;\n"
    b"   VirtualToken01Members = 444,555;\n")


def test_standby_members_are_stored_as_luna_does_and_listed(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf), "hagroup"]
    assert "Standby Members : <none>" in run(*c, "listgroups").out
    assert run(*c, "addmember", "--group", "myHAgroup", "--serial", "333").code == 0
    res = run(*c, "addstandby", "--group", "myhagroup", "--serial", "333")
    assert res.code == 0, res.err
    assert "333 is a standby member of myHAgroup" in res.out
    text = conf.read_text()
    assert "   VirtualToken00Standby = 333;\n}" in text  # at the end of its section
    assert "Standby Members : 333" in run(*c, "listgroups").out
    (group,) = json.loads(run(*c, "listgroups", "--json").out)["groups"]
    assert group["standby"] == ["333"] and len(group["members"]) == 3
    assert run(*c, "addstandby", "--group", "myHAgroup", "--serial", "78665001").code == 0
    assert "VirtualToken00Standby = 333,78665001;" in conf.read_text()

    assert run(*c, "removestandby", "--group", "myHAgroup", "--serial", "333").code == 0
    assert "VirtualToken00Standby = 78665001;" in conf.read_text()
    # a member removed is no standby either; the key goes with the last one
    assert run(*c, "removemember", "--group", "myHAgroup", "--serial", "78665001").code == 0
    assert "Standby" not in conf.read_text()


def test_deletegroup_renumbers_the_standby_key_too(tmp_path: Path) -> None:
    conf = write(tmp_path, TWO_GROUPS)
    c = ["--conf", str(conf), "hagroup"]
    assert run(*c, "addstandby", "--group", "other", "--serial", "555").code == 0
    assert run(*c, "deletegroup", "--label", "myHAgroup").code == 0
    text = conf.read_text()
    assert "VirtualToken00Standby = 555;" in text and "VirtualToken01" not in text
    assert "333" not in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["addstandby", "--group", "myHAgroup", "--serial", "444"],
         "add it first with hagroup addmember"),
        (["addstandby", "--group", "myHAgroup", "--serial", "333"], "already a standby"),
        (["addstandby", "--group", "other", "--serial", "333"],
         "already a standby member of myHAgroup"),
        (["addstandby", "--group", "nosuch", "--serial", "333"], "no HA group"),
        (["removestandby", "--group", "myHAgroup", "--serial", "599447001"],
         "not a standby member"),
        (["removemember", "--group", "other", "--serial", "444"], ""),
    ],
)
def test_standby_errors_exit_2_and_change_nothing(tmp_path: Path, args: list[str],
                                                  needle: str) -> None:
    data = TWO_GROUPS
    if args[0] == "removemember":
        # 555 standby: removing 444, the last active member, is refused
        data = TWO_GROUPS.replace(b"   VirtualToken01Members = 444,555;\n",
                                  b"   VirtualToken01Members = 444,555;\n"
                                  b"   VirtualToken01Standby = 555;\n")
        needle = "last active member"
    conf = write(tmp_path, data)
    res = run("--conf", str(conf), "hagroup", *args)
    assert_one_error_line(res, 2)
    assert needle in res.err
    assert conf.read_bytes() == data


def test_a_group_keeps_an_active_member(tmp_path: Path) -> None:
    conf = write(tmp_path, NO_HACONF)
    c = ["--conf", str(conf), "hagroup"]
    assert run(*c, "addstandby", "--group", "myHAgroup", "--serial", "599447001").code == 0
    before = conf.read_bytes()
    res = run(*c, "addstandby", "--group", "myHAgroup", "--serial", "78665001")
    assert_one_error_line(res, 2)
    assert "last active member" in res.err and conf.read_bytes() == before


def test_a_standby_that_is_no_member_is_reported(tmp_path: Path) -> None:
    data = NO_HACONF.replace(b"   VirtualToken00Members = 599447001,78665001;\n",
                             b"   VirtualToken00Members = 599447001,78665001;\n"
                             b"   VirtualToken00Standby = 42;\n")
    conf = write(tmp_path, data)
    res = run("--conf", str(conf), "conf", "check")
    assert res.code == 1 and "standby 42 is not a member of group myHAgroup" in res.out
    assert "unknown HA key" not in res.out
    res = run("--conf", str(conf), "hagroup", "listgroups")
    assert_one_error_line(res, res.code if res.code in (1, 2) else -1)  # a malformed group
    assert "standby 42 is not a member of group myHAgroup" in res.err
