"""`hacli conf ...`, discovery and bad input through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import EXAMPLE, assert_one_error_line, run, run_process

CHECK_ME = b"""HAConfiguration = {
   reconnAtt = 900;
   AutoReconectInterval = 60;
   haLogStatus = maybe;
}
VirtualToken = {
   VirtualToken00Label = g;
   VirtualToken00Members = 1,2,1;
   VirtualToken00Member = 3;
}
HASynchronize = {
   ghost = 1;
}
"""


def test_conf_get_set_show(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())
    c = ["--conf", str(conf), "conf"]
    assert run(*c, "get", "virtualtoken", "virtualtoken00label").out == "myHAgroup\n"
    assert_one_error_line(run(*c, "get", "HAConfiguration", "reconnAtt"), 1)
    assert run(*c, "set", "Misc", "ToolsDir", "/opt/bin").code == 0
    assert run(*c, "get", "Misc", "ToolsDir").out == "/opt/bin\n"
    assert run(*c, "set", "HAConfiguration", "reconnatt", "7").code == 0
    assert "reconnAtt = 7;" in conf.read_text()  # the spec's spelling for a new key
    before = conf.read_bytes()
    assert_one_error_line(run(*c, "set", "HAConfiguration", "logLen", "12"), 2)
    assert conf.read_bytes() == before
    shown = json.loads(run(*c, "show", "--json").out)
    by_key = {(s["section"], s["key"]): s for s in shown["settings"]}
    assert by_key[("HAConfiguration", "reconnAtt")]["value"] == 7
    assert by_key[("HAConfiguration", "reconnAtt")]["source"] == "file"
    assert by_key[("HAConfiguration", "AutoReconnectInterval")] | {"help": ""} == {
        "section": "HAConfiguration", "key": "AutoReconnectInterval", "value": 60,
        "text": "60", "source": "default", "help": "",
    }


def test_conf_check_reports_with_lines_and_suggestions(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(CHECK_ME)
    res = run("--conf", str(conf), "conf", "check")
    assert res.code == 1
    out = res.out
    assert f"{conf}:2: error:" in out and "reconnAtt" in out
    assert "did you mean AutoReconnectInterval?" in out
    assert f"{conf}:4: error:" in out and "enabled or disabled" in out
    assert "member 1 is listed more than once in group g" in out
    assert "did you mean VirtualToken00Members?" in out
    assert "unknown group 'ghost'" in out
    data = json.loads(run("--conf", str(conf), "conf", "check", "--json").out)
    assert data["errors"] == 3
    assert conf.read_bytes() == CHECK_ME


def test_conf_check_clean_file(tmp_path: Path) -> None:
    res = run("--conf", str(EXAMPLE), "conf", "check")
    assert res.code == 0 and "no problems found" in res.out


@pytest.mark.parametrize(
    "data",
    [
        b"Chrystoki2 = {\n   LibUNIX = /x;\n",  # unclosed brace
        b"}\n",
        b"Key = value;\n",  # key outside a section
        b"\x00\x01\x02\xff\xfe garbage",
        b"Misc = {\n   this is neither\n}\n",
    ],
)
def test_malformed_files_one_line_exit_1_unchanged(tmp_path: Path, data: bytes) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(data)
    for args in (["hagroup", "listgroups"], ["hagroup", "retry", "--count", "1"],
                 ["conf", "check"]):
        res = run("--conf", str(conf), *args)
        assert_one_error_line(res, 1)
        assert str(conf) in res.err
    assert conf.read_bytes() == data


def test_invalid_value_in_file_names_file_line_section_key(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(b"Misc = {\n}\nHAConfiguration = {\n   reconnAtt = often;\n}\n")
    res = run("--conf", str(conf), "hagroup", "listgroups")
    assert_one_error_line(res, 1)  # a problem of the file, found when reading it
    assert f"{conf}:4" in res.err and "[HAConfiguration] reconnAtt" in res.err
    assert "1..500" in res.err


def test_discovery_order_and_not_found(tmp_path: Path) -> None:
    env_dir = tmp_path / "luna"
    env_dir.mkdir()
    (env_dir / "crystoki.ini").write_bytes(b"[VirtualToken]\r\nVirtualToken00Label=ini\r\n"
                                           b"VirtualToken00Members=5\r\n")
    env = {"ChrystokiConfigurationPath": str(env_dir), "XDG_DATA_HOME": str(tmp_path / "xdg"),
           "HACLI_CONF": ""}
    res = run_process("hagroup", "listgroups", "--json", env=env)
    assert res.code == 0, res.err
    assert json.loads(res.out)["groups"][0]["label"] == "ini"
    res = run_process("--conf", str(tmp_path / "missing.conf"), "hagroup", "listgroups", env=env)
    assert_one_error_line(res, 1)
    assert "missing.conf" in res.err


def test_nothing_found_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hacli.conf.store as store

    monkeypatch.setattr(store, "SYSTEM_CONF", tmp_path / "etc" / "Chrystoki.conf")
    env = {"ChrystokiConfigurationPath": str(tmp_path / "luna"),
           "XDG_DATA_HOME": str(tmp_path / "xdg"), "HACLI_CONF": None}
    res = run("hagroup", "listgroups", env=env)  # type: ignore[arg-type]
    assert_one_error_line(res, 1)
    assert "--conf" in res.err
    assert str(tmp_path / "etc" / "Chrystoki.conf") in res.err
    assert str(tmp_path / "xdg" / "hacli" / "lab") in res.err


def test_conf_path_that_is_a_directory(tmp_path: Path) -> None:
    res = run("--conf", str(tmp_path), "conf", "show")
    assert res.code in (1, 2) and "Traceback" not in res.err
    assert res.err.startswith("Error: ")


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert_one_error_line(run("nosuch"), 2)
    assert_one_error_line(run("hagroup", "retry", "--bogus"), 2)


def test_installed_hacli_conf(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(CHECK_ME)
    res = run_process("--conf", str(conf), "conf", "check", "--json")
    assert res.code == 1 and json.loads(res.out)["errors"] == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["HAConfiguration", "AutoReconnectInterval", "59"], "add --force to write it anyway"),
        (["HAConfiguration", "AutoReconnectInterval", "0", "--force"], "1..86400"),
        (["HAConfiguration", "HAOnly", "yes"], "allowed: 0 or 1"),
        (["HAConfiguration", "HAOnly", "yes", "--force"], "allowed: 0 or 1"),
        (["HAConfiguration", "AutoReconectInterval", "60"],
         "did you mean AutoReconnectInterval? (add --force"),
        (["HAConfigration", "reconnAtt", "3"], "did you mean HAConfiguration?"),
        (["VirtualToken", "VirtualToken00Members", ",,"], "group myHAgroup has no members"),
        (["VirtualToken", "VirtualToken00Members", "1,a b"], "is not a serial number"),
        (["VirtualToken", "VirtualToken01Label", "g2"], "group g2 has no members"),
        (["VirtualToken", "VirtualToken00Label", "bad=label"], "not a valid group label"),
        (["HASynchronize", "myHAgroup", "on"], "allowed: 0 or 1"),
        (["HASynchronize", "nosuchgroup", "1"], "unknown group 'nosuchgroup'"),
        (["hacli", "Member00Serial", "599447001"], "needs both Member00Serial and"),
        (["LunaSA Client", "ReceiveTimeout", "5"], "an integer 100..3600000"),
        (["hacli", "MultipartJournalBytes", "1073741825"], "an integer 0..1073741824"),
        (["hacli", "MultipartJournalBytes", "1MiB"], "an integer 0..1073741824"),
    ],
)
def test_conf_set_applies_the_checks_readers_apply(tmp_path: Path, args: list[str],
                                                   needle: str) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())
    res = run("--conf", str(conf), "conf", "set", *args)
    assert_one_error_line(res, 2)
    assert needle in res.err
    assert conf.read_bytes() == EXAMPLE.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Chrystoki.conf"]  # no lock file


def test_conf_set_force_writes_what_luna_would_refuse_with_a_warning(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())
    c = ["--conf", str(conf), "conf"]
    res = run(*c, "set", "HAConfiguration", "AutoReconectInterval", "60", "--force")
    assert res.code == 0 and "Warning: unknown HA key 'AutoReconectInterval'" in res.err
    res = run(*c, "set", "HAConfiguration", "AutoReconnectInterval", "5", "--force")
    assert res.code == 0 and "written with --force" in res.err
    assert run(*c, "check").code == 0  # warnings only: the file stays readable
    assert json.loads(run("--conf", str(conf), "hagroup", "listgroups", "--no-probe",
                          "--json").out)["settings"]["interval"] == 5


def test_conf_set_mends_a_broken_file_but_adds_nothing_new(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(CHECK_ME)
    c = ["--conf", str(conf), "conf"]
    assert_one_error_line(run("--conf", str(conf), "hagroup", "retry", "--count", "3"), 1)
    assert run(*c, "set", "HAConfiguration", "reconnAtt", "5").code == 0  # one error fewer
    before = conf.read_bytes()
    assert_one_error_line(run(*c, "set", "HAConfiguration", "logLen", "1"), 2)
    assert conf.read_bytes() == before
    assert run(*c, "set", "HAConfiguration", "haLogStatus", "enabled").code == 0
    assert run(*c, "set", "VirtualToken", "VirtualToken00Members", "1,2").code == 0
    assert json.loads(run(*c, "check", "--json").out)["errors"] == 0


def test_conf_show_prints_flags_as_the_file_does(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())

    def shown(key: str) -> list[str]:
        out = run("--conf", str(conf), "conf", "show").out
        return next(line.split() for line in out.splitlines() if f" {key} " in line)

    assert shown("HAOnly") == ["HAConfiguration", "HAOnly", "0", "default"]
    assert run("--conf", str(conf), "hagroup", "haonly", "--enable").code == 0
    assert shown("HAOnly") == ["HAConfiguration", "HAOnly", "1", "file"]
    data = json.loads(run("--conf", str(conf), "conf", "show", "--json").out)
    ha_only = next(s for s in data["settings"] if s["key"] == "HAOnly")
    assert (ha_only["value"], ha_only["text"]) == (True, "1")


def test_no_lock_file_is_left_beside_the_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())
    legacy = tmp_path / ".Chrystoki.conf.lock"  # what earlier versions left behind
    legacy.write_bytes(b"")
    c = ["--conf", str(conf)]
    assert run(*c, "hagroup", "retry", "--count", "3").code == 0
    assert run(*c, "hagroup", "retry", "--count", "3").code == 0  # nothing to change
    assert_one_error_line(run(*c, "hagroup", "retry", "--count", "900"), 2)
    assert_one_error_line(run(*c, "conf", "set", "HAConfiguration", "HAOnly", "2"), 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Chrystoki.conf"]


def test_the_example_configuration_claims_no_use_it_does_not_have() -> None:
    header = EXAMPLE.read_text().splitlines()[0]
    demo = (EXAMPLE.parents[2] / "scripts" / "demo.py").read_text()
    assert "make demo" not in header or "docs/examples" in demo, header
