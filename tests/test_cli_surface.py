"""The command line's surface: group help, --conf anywhere, lunacm's spellings, Ctrl-C.

Issue 10, items 5 and 6: a group without a subcommand is a request for its
help; ``--conf`` works after the subcommand; lunacm's single-dash options and
names work (one table, hacli/cli/luna.py, documented in the README from the
same table); Ctrl-C ends any command with 130, never ``Aborted.`` or a
traceback, also at a prompt.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import click
import pexpect
import pytest
from clihelpers import EXAMPLE, HACLI, assert_one_error_line, run

from hacli.cli import luna
from hacli.cli.main import COMMANDS, cli
from hacli.lab import Lab

README = Path(__file__).resolve().parent.parent / "README.md"


def conf_file(tmp_path: Path) -> Path:
    path = tmp_path / "Chrystoki.conf"
    path.write_bytes(EXAMPLE.read_bytes())
    return path


@pytest.mark.parametrize("group", ["hagroup", "ha", "conf", "lab"])
def test_a_group_alone_prints_its_help(group: str) -> None:
    res = run(group)
    assert res.code == 0, res.err
    assert res.out.startswith(f"Usage: hacli {group} [OPTIONS] COMMAND")
    assert "Commands:" in res.out and res.err == ""


def test_conf_after_the_subcommand(tmp_path: Path) -> None:
    conf = conf_file(tmp_path)
    res = run("hagroup", "retry", "--count", "3", "--conf", str(conf))
    assert res.code == 0, res.err
    assert "reconnAtt = 3;" in conf.read_text()
    shown = json.loads(run("hagroup", "listgroups", "--no-probe", "--json",
                           "--conf", str(conf)).out)
    assert shown["file"] == str(conf) and shown["settings"]["retry_count"] == 3
    # given both ways, the one after the subcommand wins
    other = tmp_path / "other.conf"
    other.write_text("Misc = {\n}\n")
    res = run("--conf", str(other), "conf", "get", "HAConfiguration", "reconnAtt",
              "--conf", str(conf))
    assert (res.code, res.out.strip()) == (0, "3")


def test_lunacm_spellings(tmp_path: Path) -> None:
    conf = conf_file(tmp_path)
    c = ("--conf", str(conf), "hagroup")
    res = run(*c, "retry", "-count", "3", "-Interval", "120")  # lunacm ignores case
    assert res.code == 0, res.err
    assert "at most 3 attempts, every 120 s" in res.out
    res = run(*c, "creategroup", "-label", "lunagroup", "-serialnumber", "1111",
              "--no-transport-key")
    assert res.code == 0, res.err
    assert "with members 1111" in res.out  # creategroup's -serialnumber: its first member
    res = run(*c, "addmember", "-group", "lunagroup", "-se", "2222", "--no-transport-key")
    assert res.code == 0, res.err
    res = run(*c, "removemember", "-g", "lunagroup", "-SerialNumber", "1111")
    assert res.code == 0, res.err
    assert "members: 2222" in res.out
    assert run(*c, "haonly", "-enable").code == 0
    assert run(*c, "deletegroup", "-l", "lunagroup").code == 0
    assert "lunagroup" not in conf.read_text()


def test_lunacm_password_is_refused_without_repeating_it(tmp_path: Path) -> None:
    conf = conf_file(tmp_path)
    before = conf.read_bytes()
    res = run("--conf", str(conf), "hagroup", "creategroup", "-label", "g", "-serialnumber",
              "1111", "-password", "userpin-1234")
    assert_one_error_line(res, 2)
    assert "--pin-file" in res.err and "userpin-1234" not in res.err + res.out
    assert conf.read_bytes() == before


def test_help_shows_the_lunacm_spellings() -> None:
    res = run("hagroup", "addmember", "--help")
    assert res.code == 0
    assert re.search(r"-serialnumber, -se, -serial, --serial\b", res.out)
    assert re.search(r"-group, -g, --group\b", res.out)
    res = run("hagroup", "retry", "--help")
    assert "-count, --count" in res.out and "-interval, --interval" in res.out


def _commands() -> list[click.Command]:
    found = []
    ctx = click.Context(cli)

    def walk(cmd: click.Command) -> None:
        found.append(cmd)
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk(command)
    return found


def test_every_spelling_names_an_option_some_command_has() -> None:
    options = {o for cmd in _commands() for p in cmd.params for o in p.opts}
    for spelling in luna.SPELLINGS:
        if spelling.option != luna.REFUSED:
            assert spelling.option in options, spelling
        for name in spelling.luna:
            assert name in options, f"{name} is accepted by no command"


def test_readme_shows_the_table() -> None:
    text = README.read_text()
    assert luna.markdown_table() in text
    assert re.search(r"^\| 130 \| .*Ctrl-C", text, re.MULTILINE)


# ---- Ctrl-C, in a real terminal ---------------------------------------------------------


def _no_lab_pin(lab: Lab, tmp_path: Path) -> Path:
    """The lab's configuration without LabDir: hacli has no PIN and must ask."""
    conf = tmp_path / "Chrystoki.conf"
    conf.write_text("".join(line for line in lab.conf_path.read_text().splitlines(True)
                            if "LabDir" not in line))
    return conf


def _at_the_pin_prompt(lab: Lab, tmp_path: Path, key: str) -> pexpect.spawn:
    """``hacli multitoken`` in a terminal, asked for a PIN; ``key`` is sent at the
    prompt (``intr``: Ctrl-C, ``eof``: Ctrl-D) and the run waited for."""
    conf = _no_lab_pin(lab, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("HACLI_PIN", "HACLI_SO_PIN")}
    child = pexpect.spawn(HACLI, ["--conf", str(conf), "multitoken", "--seconds", "0.2"],
                          env=env, cwd=str(tmp_path), encoding="utf-8", timeout=30)
    child.expect_exact("Enter PIN: ")
    if key == "intr":
        child.sendintr()
    else:
        child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert "Aborted" not in child.before and "Traceback" not in child.before
    return child


def test_ctrl_c_at_a_prompt_exits_130_quietly(lab: Lab, tmp_path: Path) -> None:
    child = _at_the_pin_prompt(lab, tmp_path, "intr")
    assert child.exitstatus == 130 and "Error" not in child.before


def test_end_of_input_at_a_prompt_is_one_error_line(lab: Lab, tmp_path: Path) -> None:
    child = _at_the_pin_prompt(lab, tmp_path, "eof")
    assert child.exitstatus == 1
    errors = [line for line in child.before.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "end of input" in errors[0]
