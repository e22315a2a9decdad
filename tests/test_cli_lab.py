"""`hacli lab ...` as a user runs it: the installed command, real processes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clihelpers import assert_one_error_line, run_process
from conftest import lab_processes, to_shared_layout

from hacli.lab import Lab, find_tools
from hacli.lab.procs import proc_start_time, wait_until

SYSTEM_P11KIT = "/usr/bin/p11-kit"
SYSTEM_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
#: The end of the hacli section as hacli wrote it before the lab had its own p11-kit.
OLD_BY_VALUE_BLOCK = """\
   # lab: p11-kit 0.24's RPC forwards no AES key-wrap mechanism, so members
   # cannot wrap keys under the transport key; lab keys are test keys, so they
   # may be replicated by value (in the clear, through this host's memory).
   # Never set this for keys that matter.
   ReplicateByValue = 1;
"""


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
    assert set(status) == {"dir", "conf", "group", "softhsm2_conf", "pin_file",
                           "p11kit_client", "p11kit_version", "members"}
    assert status["p11kit_client"] == find_tools().p11kit_client
    assert status["p11kit_version"] == find_tools().p11kit_version == "0.25.5"
    assert [m["state"] for m in status["members"]] == ["running", "running"]
    assert all(set(m) == {"serial", "label", "state", "pid", "softhsm2_conf"}
               for m in status["members"])
    assert status["softhsm2_conf"] == status["members"][0]["softhsm2_conf"] == str(
        lab_dir / "m0" / "softhsm2.conf")
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
    degraded = run_process("lab", "status", *d, "--json")
    assert [m["state"] for m in json.loads(degraded.out)["members"]] == ["failed", "hung"]
    assert degraded.code == 3  # a member is not running, as `ha status` says for a group
    bad = run_process("lab", "fail", "nosuch", *d)
    assert_one_error_line(bad, 2)
    assert "member0" in bad.err
    for m in (first, second):
        assert run_process("lab", "restore", m["serial"], *d).code == 0
    healthy = run_process("lab", "status", *d, "--json")
    assert [m["state"] for m in json.loads(healthy.out)["members"]] == ["running", "running"]
    assert healthy.code == 0

    human = run_process("lab", "status", *d)
    assert first["serial"] in human.out and "running" in human.out
    assert f"0.25.5, client {status['p11kit_client']}" in human.out
    for out in (res, again, human):
        assert pin not in out.out + out.err

    assert run_process("lab", "down", *d).code == 0
    assert lab_processes(Lab(lab_dir)) == []
    stopped = run_process("lab", "status", *d)
    assert stopped.code == 3
    assert [line.split()[2] for line in stopped.out.splitlines()
            if line.startswith("member")] == ["stopped", "stopped"]


def test_commands_on_a_missing_lab_exit_1_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-lab"
    for args in (("fail", "member0"), ("hang", "member0"), ("restore", "member0"),
                 ("status",), ("down",), ("down", "--purge")):
        res = run_process("lab", *args, "--dir", str(missing))
        assert_one_error_line(res, 1)
        assert f"no lab in {missing}" in res.err
        assert not missing.exists(), args


def test_purge_says_what_it_kept(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert run_process("lab", "up", "--members", "1", "--dir", str(tmp_path)).code == 0
    res = run_process("lab", "down", "--purge", "--dir", str(tmp_path))
    assert res.code == 0
    assert "removed" not in res.out.split(";")[-1] and "notes.txt" in res.out
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _make_old(lab: Lab) -> tuple[bytes, subprocess.Popen[bytes]]:
    """Turn a fresh lab into one an older hacli left: its Chrystoki.conf and member0's server.

    Returns the Chrystoki.conf the update should produce (with a user's edits
    kept) and the system p11-kit server now serving member0.
    """
    conf = lab.conf_path.read_text()
    client = find_tools().p11kit_client
    # a user's edits, which the update must keep byte for byte
    edited = conf.replace("AutoReconnectInterval = 5;", "AutoReconnectInterval = 7;  # mine")
    edited = edited.replace("   LabDir =", "   # my note\n   LabDir =")
    assert edited.count("mine") == 1 and edited.count("my note") == 1
    old = edited.replace(f"Library = {client};", f"Library = {SYSTEM_CLIENT};")
    assert old.count(SYSTEM_CLIENT) == 2
    old = _with_old_block(old)
    lab.conf_path.write_text(old)

    # member0 served by the system's p11-kit, as an older `lab up` started it
    state = json.loads(lab.state_file.read_text())
    rec = state["members"][0]
    os.killpg(rec["pid"], signal.SIGKILL)
    member = lab.member_of(rec)
    assert wait_until(lambda: lab.status().members[0].state == "failed", 10)
    member.socket.unlink(missing_ok=True)
    server = subprocess.Popen(
        [SYSTEM_P11KIT, "server", "--foreground", "--provider", find_tools().softhsm2,
         "--name", str(member.socket), member.uri],
        env={"PATH": os.environ["PATH"], **member.softhsm2_env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    assert wait_until(lambda: member.socket.exists(), 10)
    rec["pid"], rec["start_time"] = server.pid, proc_start_time(server.pid)
    lab.state_file.write_text(json.dumps(state))
    assert lab.status().members[0].state == "running"
    assert os.readlink(f"/proc/{server.pid}/exe").startswith("/usr/")
    return edited.encode(), server


def _with_old_block(text: str) -> str:
    head, sep, tail = text.rpartition("   LabDir = ")
    line, nl, rest = tail.partition("\n")
    return head + sep + line + nl + OLD_BY_VALUE_BLOCK + rest


def test_up_brings_an_older_lab_up_to_date(lab_dir: Path) -> None:
    d = ["--dir", str(lab_dir)]
    assert run_process("lab", "up", *d, "--members", "2").code == 0
    lab = Lab(lab_dir)
    want, old_server = _make_old(lab)
    try:
        assert b"ReplicateByValue" in lab.conf_path.read_bytes()
        res = run_process("lab", "up", *d)
        assert res.code == 0, res.err
        assert old_server.wait(timeout=10) is not None  # the old server was stopped
    finally:
        if old_server.poll() is None:
            old_server.kill()
            old_server.wait()
    assert lab.conf_path.read_bytes() == want  # the old keys updated, the user's edits kept
    out = res.out
    assert f"Lab started again: {lab.members()[0].serial}." in out  # member0, on the build
    assert ("Updated: member0: its server ran /usr/libexec/p11-kit/p11-kit-server; started "
            "again on the lab's p11-kit 0.25.5") in out
    assert "Updated: Chrystoki.conf: removed ReplicateByValue (retired" in out
    assert (f"Updated: Chrystoki.conf: Member00Library, Member01Library: {SYSTEM_CLIENT} -> "
            f"{find_tools().p11kit_client}") in out
    prefix = find_tools().p11kit_prefix
    for m in lab.status().members:
        assert m.state == "running"
        assert os.readlink(f"/proc/{m.pid}/exe").startswith(prefix + "/")

    # up to date now: a second up changes nothing and says so
    again = run_process("lab", "up", *d)
    assert again.code == 0 and "already up; nothing changed" in again.out
    assert "Updated" not in again.out
    assert lab.conf_path.read_bytes() == want


def test_up_updates_an_older_conf_and_keeps_the_rest(lab_dir: Path) -> None:
    d = ["--dir", str(lab_dir)]
    assert run_process("lab", "up", *d, "--members", "1").code == 0
    lab = Lab(lab_dir)
    fresh = lab.conf_path.read_text()
    lab.conf_path.write_text(_with_old_block(fresh))  # servers up to date, the file not
    res = run_process("lab", "up", *d)
    assert res.code == 0, res.err
    assert res.out.startswith("Lab is up; brought up to date:\nUpdated: Chrystoki.conf: removed "
                              "ReplicateByValue (retired"), res.out
    assert lab.conf_path.read_text() == fresh

    # a ReplicateByValue written by hand (retired: the engine ignores it) goes too,
    # but only its line: the comment above it is the user's
    mine = fresh.replace("   LabDir =", "   # I want this\n   ReplicateByValue = 1;\n   LabDir =")
    lab.conf_path.write_text(mine)
    res = run_process("lab", "up", *d, "--json")
    assert res.code == 0, res.err
    assert res.err == "Updated: Chrystoki.conf: removed ReplicateByValue (retired: keys " \
        "replicate only wrapped under the group's transport key)\n"
    assert json.loads(res.out)["members"][0]["state"] == "running"  # stdout: JSON only
    assert lab.conf_path.read_text() == mine.replace("   ReplicateByValue = 1;\n", "")
    assert "# I want this" in lab.conf_path.read_text()


def test_up_moves_an_older_labs_tokens_and_says_so(lab_dir: Path) -> None:
    d = ["--dir", str(lab_dir)]
    assert run_process("lab", "up", *d, "--members", "2").code == 0
    assert run_process("lab", "down", *d).code == 0
    lab = Lab(lab_dir)
    to_shared_layout(lab)
    res = run_process("lab", "up", *d)
    assert res.code == 0, res.err
    m0, m1 = lab.members()
    assert f"Lab started again: {m0.serial}, {m1.serial}." in res.out
    for m in (m0, m1):
        assert f"Updated: {m.label}: token moved from {lab_dir}/tokens/" in res.out
        assert f"{m.label}: SOFTHSM2_CONF={m.softhsm2_conf}" in res.out  # the status table
    assert "Updated: softhsm2.conf: removed with tokens/" in res.out
    again = run_process("lab", "up", *d)
    assert "already up; nothing changed" in again.out and "Updated" not in again.out


def test_conf_picks_the_lab_that_wrote_the_file(lab: Lab, tmp_path: Path) -> None:
    """``hacli lab ... --conf X`` acts on the lab named by X's LabDir (it used
    to act on the default lab whatever --conf said); a file no lab wrote is
    refused, with --dir as the way out."""
    res = run_process("lab", "status", "--json", "--conf", str(lab.conf_path))
    assert res.code == 0, res.err
    assert Path(json.loads(res.out)["dir"]) == lab.directory
    res = run_process("--conf", str(lab.conf_path), "lab", "status", "--json")
    assert res.code == 0 and Path(json.loads(res.out)["dir"]) == lab.directory, res.err
    plain = tmp_path / "Chrystoki.conf"
    plain.write_text("Chrystoki2 = {\n   LibUNIX64 = /usr/lib/libCryptoki2_64.so;\n}\n")
    res = run_process("lab", "fail", "member0", "--conf", str(plain))
    assert_one_error_line(res, 2)
    assert "no LabDir" in res.err and "--dir" in res.err
