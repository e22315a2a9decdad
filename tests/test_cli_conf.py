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
