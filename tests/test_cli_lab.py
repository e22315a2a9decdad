"""`hacli lab ...` as a user runs it: the installed command, real processes."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from clihelpers import assert_one_error_line, run_process
from conftest import lab_processes

from hacli.lab import Lab


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "lab"
    yield directory
    res = run_process("lab", "down", "--purge", "--dir", str(directory))
    assert res.code == 0, res.err


def test_lab_lifecycle_through_the_cli(lab_dir: Path) -> None:
    d = ["--dir", str(lab_dir)]
    res = run_process("lab", "up", *d, "--json")
    assert res.code == 0, res.err
    status = json.loads(res.out)
    assert set(status) == {"dir", "conf", "group", "softhsm2_conf", "pin_file", "members"}
    assert [m["state"] for m in status["members"]] == ["running", "running"]
    assert all(set(m) == {"serial", "label", "state", "pid"} for m in status["members"])
    pin = Path(status["pin_file"]).read_text().strip()
    assert stat.S_IMODE(Path(status["pin_file"]).stat().st_mode) == 0o600
    pids = [m["pid"] for m in status["members"]]

    again = run_process("lab", "up", *d)
    assert again.code == 0 and "already up" in again.out
    assert [m["pid"] for m in json.loads(run_process("lab", "status", *d, "--json").out)
            ["members"]] == pids

    first, second = status["members"]
    assert json.loads(run_process("lab", "fail", first["serial"], *d, "--json").out)[
        "state"] == "failed"
    assert "hung" in run_process("lab", "hang", second["label"], *d).out
    states = json.loads(run_process("lab", "status", *d, "--json").out)["members"]
    assert [m["state"] for m in states] == ["failed", "hung"]
    bad = run_process("lab", "fail", "nosuch", *d)
    assert_one_error_line(bad, 2)
    assert "member0" in bad.err
    for m in (first, second):
        assert run_process("lab", "restore", m["serial"], *d).code == 0
    states = json.loads(run_process("lab", "status", *d, "--json").out)["members"]
    assert [m["state"] for m in states] == ["running", "running"]

    human = run_process("lab", "status", *d)
    assert first["serial"] in human.out and "running" in human.out
    for out in (res, again, human):
        assert pin not in out.out + out.err

    assert run_process("lab", "down", *d).code == 0
    assert lab_processes(Lab(lab_dir)) == []
