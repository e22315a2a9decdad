"""The lab with real processes: SoftHSM2 tokens behind p11-kit servers, no mocks."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import to_shared_layout

from hacli.errors import LabError, UsageError
from hacli.lab import (
    FAILED,
    HUNG,
    RUNNING,
    STOPPED,
    Lab,
    LabUsageError,
    find_tools,
    servers,
    tools,
)
from hacli.lab.procs import group_pids, proc_cmdline, proc_state, wait_until
from hacli.lab.tokens import REQUIRED_MECHANISMS, clean_env, list_tokens

pytestmark = pytest.mark.lab

STATUS_KEYS = {
    "dir", "conf", "group", "softhsm2_conf", "pin_file", "p11kit_client", "p11kit_version",
    "members",
}
#: Debian 12's own client module (p11-kit 0.24.1), which the lab must never use.
SYSTEM_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
MEMBER_KEYS = {"serial", "label", "state", "pid", "softhsm2_conf"}


def _states(lab: Lab) -> list[str]:
    return [m.state for m in lab.status().members]


# --------------------------------------------------------------------------- layout


def test_up_creates_tokens_conf_and_private_pin_files(lab: Lab) -> None:
    status = lab.status()
    assert set(status.as_dict()) == STATUS_KEYS
    assert all(set(m) == MEMBER_KEYS for m in status.as_dict()["members"])
    assert json.loads(status.to_json()) == status.as_dict()
    assert status.dir == str(lab.directory)
    assert status.conf == str(lab.conf_path) and lab.conf_path.is_file()
    # member0's (each member has its own); the top-level key stays for older tools
    assert status.softhsm2_conf == str(lab.softhsm2_conf) == str(lab.directory / "m0/softhsm2.conf")
    assert status.pin_file == str(lab.pin_file)
    assert status.group == "labgroup"
    tools = find_tools()
    assert status.p11kit_client == tools.p11kit_client == lab.client_library
    assert status.p11kit_client == f"{tools.p11kit_prefix}/lib/pkcs11/p11-kit-client.so"
    assert status.p11kit_version == _pc_version(Path(tools.p11kit_prefix)) == "0.25.5"
    assert [m.label for m in status.members] == ["member0", "member1"]
    assert all(m.state == RUNNING and m.pid for m in status.members)
    assert len({m.serial for m in status.members}) == 2

    for secret in (lab.pin_file, lab.so_pin_file):
        mode = stat.S_IMODE(secret.stat().st_mode)
        assert mode == 0o600, f"{secret} has mode {mode:o}"
        assert len(secret.read_text()) >= 16
    assert lab.pin() != lab.so_pin()

    # one token directory and one SoftHSM2 configuration per member, nothing shared
    assert not (lab.directory / "tokens").exists()
    assert not (lab.directory / "softhsm2.conf").exists()
    for m, st in zip(lab.members(), status.members, strict=True):
        mdir = lab.directory / f"m{m.index}"
        assert m.softhsm2_conf == lab.member_softhsm2_conf(m.label) == mdir / "softhsm2.conf"
        assert st.softhsm2_conf == str(m.softhsm2_conf)
        assert m.softhsm2_env == {"SOFTHSM2_CONF": str(m.softhsm2_conf)}
        assert f"directories.tokendir = {mdir / 'tokens'}\n" in m.softhsm2_conf.read_text()
        assert len([p for p in (mdir / "tokens").iterdir() if (p / "token.object").is_file()]) == 1
        assert m.socket == mdir / "p11kit.sock"
        assert stat.S_ISSOCK(m.socket.stat().st_mode)
        assert m.env == {"P11_KIT_SERVER_ADDRESS": f"unix:path={m.socket}"}


def test_chrystoki_conf_describes_the_group(lab: Lab) -> None:
    text = lab.conf_path.read_text()
    s0, s1 = (m.serial for m in lab.members())
    for line in (
        "ReceiveTimeout = 3000;",
        "VirtualToken00Label = labgroup;",
        f"VirtualToken00SN = 1{s0};",
        f"VirtualToken00Members = {s0},{s1};",
        "VirtualTokenActiveRecovery = activeBasic;",
        "labgroup = 1;",
        "AutoReconnectInterval = 5;",
        "reconnAtt = -1;",
        "haLogStatus = enabled;",
        f"haLogPath = {lab.log_dir};",
        "logLen = 1000000;",
        f"Member00Serial = {s0};",
        f"Member01Serial = {s1};",
        f"Member00Library = {lab.client_library};",
        f"Member01Environment = P11_KIT_SERVER_ADDRESS=unix:path={lab.directory}/m1/p11kit.sock;",
        f"LabDir = {lab.directory};",
    ):
        assert line in text, line
    # keys replicate wrapped under the transport key now, never by value
    assert "ReplicateByValue" not in text
    assert not lab.client_library.startswith("/usr/")
    for section in ("LunaSA Client", "VirtualToken", "HASynchronize", "HAConfiguration", "hacli"):
        assert f"\n{section} = {{\n" in text
    assert text.count("{") == text.count("}") == 5
    assert lab.group_serial == "1" + s0 == lab.status().group_serial
    assert lab.log_dir.is_dir()


def test_three_member_lab(lab3: Lab) -> None:
    members = lab3.members()
    assert [m.label for m in members] == ["member0", "member1", "member2"]
    assert f"VirtualToken00Members = {','.join(m.serial for m in members)};" in (
        lab3.conf_path.read_text()
    )
    assert lab3.list_tokens() == [[{"label": m.label, "serial": m.serial}] for m in members]


# --------------------------------------------------------------------------- isolation


def test_each_socket_serves_exactly_its_own_token(lab: Lab, member_client) -> None:
    members = lab.members()
    assert lab.list_tokens() == [[{"label": m.label, "serial": m.serial}] for m in members]
    # the same through python-pkcs11, as the engine will see it
    for m in members:
        client = member_client(lab, m.label, login=False)
        seen = client.call("[(t.label, t.serial.decode()) for t in lib.get_tokens()]")
        assert seen == {"value": repr([(m.label, m.serial)])}


def test_each_members_softhsm2_conf_opens_its_token_only(lab: Lab) -> None:
    members = lab.members()
    for m in members:
        out = subprocess.run(
            ["softhsm2-util", "--show-slots"],
            env={**os.environ, **m.softhsm2_env},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert m.serial in out and m.label in out
        assert [o.serial for o in members if o.serial in out] == [m.serial]
    assert find_tools().softhsm2.endswith("libsofthsm2.so")


def test_server_processes_are_own_groups_with_member_uri(lab: Lab) -> None:
    prefix = find_tools().p11kit_prefix
    for m, st in zip(lab.members(), lab.status().members, strict=True):
        assert os.getpgid(st.pid) == st.pid  # group leader of its own group
        assert os.getsid(st.pid) == st.pid
        assert m.uri in proc_cmdline(st.pid)
        # the lab's own p11-kit build, never the system's
        assert os.readlink(f"/proc/{st.pid}/exe") == f"{prefix}/libexec/p11-kit/p11-kit-server"


def test_members_forward_key_wrap_through_the_labs_client(lab: Lab) -> None:
    """What `up` checks, shown directly: both mechanisms come through the build's client."""
    wanted = list(REQUIRED_MECHANISMS.values())
    seen = list_tokens(lab.members(), 10.0, mechanisms=wanted)
    assert [[t["missing"] for t in tokens] for tokens in seen] == [[[]], [[]]]
    servers.verify(lab, _records(lab), 10.0)  # does not raise


STALL_PROXY = Path(__file__).with_name("stallproxy.py")


def _two_calls_in_a_stalled_answer(lab: Lab, client: str) -> dict[str, object]:
    """tests/stallproxy.py's client run: two calls in flight on one connection
    of ``client`` to member0, its answer stopped after the header, then the
    connection cut; each call's outcome and the seconds until the last came back."""
    member = lab.members()[0]
    out = subprocess.run([sys.executable, str(STALL_PROXY), "client", client,
                          str(member.socket), str(lab.pin_file)],
                         capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_labs_client_fails_every_call_when_a_shared_connection_breaks(lab: Lab) -> None:
    """hacli's patch (packaging/p11-kit/rpc-read-failure-wakes-waiters.patch):
    a connection that fails while one call reads an answer's body and another
    waits for its own header fails both at once."""
    result = _two_calls_in_a_stalled_answer(lab, lab.client_library)
    assert result["calls"] == {"call0": "DeviceError", "call1": "DeviceError"}, result
    assert isinstance(result["seconds"], float) and result["seconds"] < 1.0
    fixes = Path(lab.client_library).with_name("hacli-fixes").read_text().split()
    assert "rpc-read-failure-wakes-waiters" in fixes


def test_the_stock_client_leaves_a_call_waiting_when_a_shared_connection_breaks(
        lab: Lab) -> None:
    """Why the engine gives a stock p11-kit client one call at a time: upstream's
    rpc_socket_read leaves the header it read in place and wakes nobody when a
    read fails, so the other call waits on its condition variable for good
    (Debian 12's 0.24.1; upstream 0.26.4 reads the same).  Should Debian fix
    it, this fails, and the engine's rule can be relaxed."""
    result = _two_calls_in_a_stalled_answer(lab, SYSTEM_CLIENT)
    assert sorted(result["calls"].values()) == ["DeviceError", "waiting"], result  # type: ignore[attr-defined]


def test_mechanism_check_fails_loudly_with_the_system_client(lab: Lab) -> None:
    """The check at `up`/`restore`, run against a live member through Debian's 0.24.1 client.

    The same member passes through the lab's client (above), and through the
    system client it still sees its token: the only thing that can fail is
    the mechanism list.
    """
    assert os.path.isfile(SYSTEM_CLIENT), "Debian's p11-kit-modules is needed (make deps)"
    assert os.path.realpath(SYSTEM_CLIENT) != os.path.realpath(lab.client_library)
    member = lab.members()[0]
    seen = list_tokens([member], 10.0, client=SYSTEM_CLIENT,
                       mechanisms=list(REQUIRED_MECHANISMS.values()))
    assert seen == [[{"label": member.label, "serial": member.serial,
                      "missing": [0x210A, 0x1085]}]]
    with pytest.raises(LabError) as info:
        servers.verify(lab, _records(lab)[:1], 10.0, client=SYSTEM_CLIENT)
    message = str(info.value)
    assert message.startswith(f"member0: the p11-kit client at {SYSTEM_CLIENT} does not forward ")
    assert "CKM_AES_KEY_WRAP_PAD" in message and "CKM_AES_CBC_PAD" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- fail / hang / restore


def test_fail_makes_calls_fail_and_restore_keeps_keys(healthy_lab: Lab, member_client) -> None:
    lab = healthy_lab
    m0 = lab.members()[0]
    old_pid = lab.status().member(m0.serial).pid
    client = member_client(lab, m0.serial)
    made = client.call(
        "session.generate_key(KeyType.AES, 128, label='before-crash', store=True).label"
    )
    assert made == {"value": "'before-crash'"}

    status = lab.fail(m0.serial)
    assert status.state == FAILED and status.pid is None
    assert lab.status().member(m0.serial).state == FAILED
    assert lab.status().member("member1").state == RUNNING
    assert not group_pids(old_pid)  # server and its connection child are gone
    assert client.call("session.generate_random(128)") == {"error": "DeviceError"}
    assert lab.list_tokens(m0.serial) == [[]]  # a new client sees no token
    assert lab.fail(m0.serial).state == FAILED  # failing again is harmless

    restored = lab.restore(m0.label)
    assert restored.state == RUNNING and restored.pid not in (None, old_pid)
    assert lab.list_tokens(m0.serial) == [[{"label": m0.label, "serial": m0.serial}]]
    # The old connection died with the server: its calls keep failing with
    # DeviceError until the client re-initialises its module; then the old
    # session handle is invalid and a new login works.
    assert client.call("session.generate_random(128)") == {"error": "DeviceError"}
    assert client.call("lib.reinitialize()") == {"value": "None"}
    assert client.call("session.generate_random(128)") == {"error": "SessionHandleInvalid"}
    assert client.call("login()") == {"value": "None"}
    assert client.call("len(session.generate_random(128))") == {"value": "16"}
    # and a new client finds the key made before the crash
    fresh = member_client(lab, m0.serial)
    found = fresh.call("[k.label for k in session.get_objects({Attribute.LABEL: 'before-crash'})]")
    assert found == {"value": "['before-crash']"}
    fresh.call("session.get_key(label='before-crash').destroy()")


def test_hang_blocks_calls_until_restore(healthy_lab: Lab, member_client) -> None:
    lab = healthy_lab
    m1 = lab.members()[1]
    client = member_client(lab, m1.label)
    assert "value" in client.call("session.generate_random(128)")
    pid = lab.status().member(m1.label).pid

    assert lab.hang(m1.serial).state == HUNG
    assert lab.status().member(m1.serial) == lab.status().member(m1.serial)
    assert lab.status().member(m1.serial).state == HUNG
    assert lab.status().member(m1.serial).pid == pid
    assert all(proc_state(p) == "T" for p in group_pids(pid))
    assert client.call("len(session.generate_random(128))", timeout=0.3) == {"blocked": True}
    # a frozen member must not freeze the others (they share a token directory)
    other = member_client(lab, "member0")
    assert other.call("len(session.generate_random(128))") == {"value": "16"}
    with pytest.raises(LabError, match="did not answer"):
        lab.list_tokens(m1.serial, timeout=0.5)

    assert lab.restore(m1.serial).state == RUNNING
    assert lab.status().member(m1.serial).pid == pid  # resumed, not restarted
    assert client.join(10.0) == {"value": "16"}


def test_hang_of_failed_member_is_refused(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.fail("member0")
    with pytest.raises(LabError, match="not running"):
        lab.hang("member0")


def test_fail_a_hung_member(healthy_lab: Lab) -> None:
    lab = healthy_lab
    pid = lab.status().member("member1").pid
    lab.hang("member1")
    assert lab.fail("member1").state == FAILED
    assert not group_pids(pid)


def test_unknown_member_lists_valid_ones(lab: Lab) -> None:
    serials = [m.serial for m in lab.members()]
    for call in (lab.fail, lab.hang, lab.restore, lab.member):
        with pytest.raises(LabUsageError) as info:
            call("nosuchmember")
        assert all(s in str(info.value) for s in serials)
        assert isinstance(info.value, UsageError) and isinstance(info.value, LabError)
        assert "\n" not in str(info.value)


def test_restore_of_running_member_changes_nothing(lab: Lab) -> None:
    before = lab.status()
    assert lab.restore("member0").pid == before.member("member0").pid
    assert lab.status() == before


# --------------------------------------------------------------------------- up / down


def test_up_twice_is_harmless(lab: Lab) -> None:
    before = lab.status()
    again = lab.up()
    assert again.started == () and not again.created
    assert again.members == before.members
    assert lab.up(2).members == before.members
    with pytest.raises(LabUsageError, match="has 2 members"):
        lab.up(3)


def test_up_restarts_a_lab_whose_processes_died(healthy_lab: Lab, member_client) -> None:
    lab = healthy_lab
    before = lab.status()
    conf_before = lab.conf_path.read_bytes()
    for m in before.members:  # as a reboot would: every process gone, files kept
        os.killpg(m.pid, signal.SIGKILL)
    assert wait_until(lambda: _states(lab) == [FAILED, FAILED], 10)

    after = lab.up()
    assert set(after.started) == {m.serial for m in before.members}
    assert [m.serial for m in after.members] == [m.serial for m in before.members]
    assert all(m.state == RUNNING for m in after.members)
    assert {m.pid for m in after.members}.isdisjoint({m.pid for m in before.members})
    assert lab.conf_path.read_bytes() == conf_before  # kept as it was
    assert lab.list_tokens() == [[{"label": m.label, "serial": m.serial}] for m in after.members]
    assert "value" in member_client(lab, "member1").call("session.generate_random(8)")


def test_up_resumes_hung_member(healthy_lab: Lab) -> None:
    lab = healthy_lab
    pid = lab.status().member("member0").pid
    lab.hang("member0")
    after = lab.up()
    assert after.started == (lab.member("member0").serial,)
    assert after.member("member0").state == RUNNING and after.member("member0").pid == pid


def test_down_leaves_no_process_and_up_restores_tokens(tmp_path: Path, member_client) -> None:
    lab = Lab(tmp_path / "lab", timeout=10.0)
    first = lab.up(members=1)
    assert first.created and lab.exists()
    serial = first.members[0].serial
    pid = first.members[0].pid
    client = member_client(lab, serial)  # a connection: p11-kit-remote child in the group
    client.call("session.generate_key(KeyType.AES, 128, label='kept', store=True)")
    assert len(group_pids(pid)) >= 2
    lab.hang(serial)  # down must also end stopped processes

    lab.down()
    assert not group_pids(pid)
    assert not [p for p in _all_pids() if lab.members()[0].uri in proc_cmdline(p)]
    # stopped on purpose, not crashed: `down` says so, and `up` starts it again
    assert lab.status().members[0].state == STOPPED
    assert lab.status().members[0].pid is None
    with pytest.raises(LabError, match=r"is not running \(stopped\); restore it first"):
        lab.hang(serial)
    assert lab.fail(serial).state == STOPPED  # nothing to kill
    assert lab.exists() and lab.tokens_dir_of(0).is_dir()
    lab.down()  # down twice is harmless

    again = lab.up()
    assert [m.serial for m in again.members] == [serial]
    fresh = member_client(lab, serial)
    assert fresh.call("session.get_key(label='kept').label") == {"value": "'kept'"}

    assert lab.down(purge=True) == ()
    assert not lab.directory.exists()
    assert not lab.exists()
    # nothing left: purging again is an error that creates nothing
    for purge in (True, False):
        with pytest.raises(LabError, match="no lab in"):
            lab.down(purge=purge)
        assert not lab.directory.exists()


def test_purge_keeps_files_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    lab = Lab(tmp_path, timeout=10.0)
    lab.up(members=1)
    assert lab.down(purge=True) == ("notes.txt",)  # what was kept, and why the dir stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_purge_of_a_directory_the_lab_did_not_create_removes_it_when_empty(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "made-by-me"
    directory.mkdir()
    (directory / "x").write_text("")  # not empty when `up` ran: the lab did not make it
    lab = Lab(directory, timeout=10.0)
    lab.up(members=1)
    (directory / "x").unlink()
    assert lab.down(purge=True) == ()
    assert not directory.exists()  # "removed" means removed


def test_commands_on_a_missing_lab_create_nothing(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "none")
    assert not lab.exists()
    with pytest.raises(LabError, match="no lab in"):
        lab.status()
    for verb in ("fail", "hang", "restore"):
        with pytest.raises(LabError, match="no lab in"):
            getattr(lab, verb)("member0")
    for purge in (False, True):
        with pytest.raises(LabError, match="no lab in"):
            lab.down(purge=purge)
    assert not lab.directory.exists()
    # an existing directory without a lab gets no lock file either
    lab.directory.mkdir()
    with pytest.raises(LabError, match="no lab in"):
        lab.fail("member0")
    with pytest.raises(LabError, match="no lab in"):
        lab.down(purge=True)
    assert list(lab.directory.iterdir()) == []


def test_purge_cleans_the_lock_file_an_older_hacli_left(tmp_path: Path) -> None:
    # `lab fail` of an older hacli made DIR and DIR/lab.lock on a missing lab
    lab = Lab(tmp_path / "left")
    lab.directory.mkdir()
    lab.lock_file.write_text("")
    assert lab.down(purge=True) == ()
    assert not lab.directory.exists()


def test_partial_lab_is_refused_then_purged(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    (tmp_path / "pin").write_text("x")
    lab = Lab(tmp_path)
    with pytest.raises(LabError, match="part of a lab"):
        lab.up()
    assert (tmp_path / "pin").read_text() == "x"  # not touched
    lab.down(purge=True)
    assert not (tmp_path / "tokens").exists() and not (tmp_path / "pin").exists()


def test_bad_member_count_and_directory(tmp_path: Path) -> None:
    with pytest.raises(LabUsageError):
        Lab(tmp_path / "a").up(members=0)
    with pytest.raises(LabUsageError, match=r"Chrystoki\.conf cannot hold"):
        Lab(tmp_path / "a;b").up()
    with pytest.raises(LabUsageError, match="too long"):
        Lab(tmp_path / ("x" * 120)).up()
    assert not (tmp_path / "a").exists()


def test_two_commands_at_once_do_not_corrupt_the_lab(tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    code = (
        "import sys; from hacli.lab import Lab; s = Lab(sys.argv[1]).up(2); print(int(s.created))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(outs) == ["0", "1"]  # one created the lab, the other found it up
    lab = Lab(directory)
    try:
        state = json.loads(lab.state_file.read_text())
        assert len(state["members"]) == 2
        assert _states(lab) == [RUNNING, RUNNING]
        servers = [p for p in _all_pids() if str(directory) in " ".join(proc_cmdline(p))]
        assert len(servers) == 2  # no duplicate servers
    finally:
        lab.down(purge=True)


def test_up_gives_each_member_of_an_older_lab_its_own_token_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_client
) -> None:
    """A lab an older hacli made (every token in DIR/tokens, one softhsm2.conf),
    with its servers still running on that layout (one of them frozen): `up`
    stops them, moves each token into its member's own directory (renames
    only), starts them again, and every key is still there."""
    lab = Lab(tmp_path / "lab", timeout=10.0)
    try:
        lab.up(members=3)
        for m in lab.members():
            client = member_client(lab, m.label)
            made = client.call(f"session.generate_key(KeyType.AES, 128, label='kept-{m.index}', "
                               "store=True).label")
            assert made == {"value": f"'kept-{m.index}'"}
        lab.down()
        shared_conf = to_shared_layout(lab)
        moved = {p.name for p in (lab.directory / "tokens").iterdir()}
        assert len(moved) == 3

        # the older lab's servers, as an older `up` started them, on the shared directory
        old_env = clean_env({"SOFTHSM2_CONF": str(shared_conf)})
        monkeypatch.setattr(servers, "server_env", lambda paths, index: old_env)
        state = json.loads(lab.state_file.read_text())
        servers.start(lab, state["members"], find_tools(), 10.0)
        lab.state_file.write_text(json.dumps(state))
        monkeypatch.undo()
        old_pids = {m.pid for m in lab.status().members}
        assert _states(lab) == [RUNNING, RUNNING, RUNNING]
        lab.hang("member2")
        # until `up` has moved the tokens, a failed member is not started on the older layout
        lab.fail("member1")
        with pytest.raises(LabError, match=r"older hacli made it\): run `hacli lab up`"):
            lab.restore("member1")

        status = lab.up()
        assert _states(lab) == [RUNNING, RUNNING, RUNNING]
        assert not old_pids & {m.pid for m in status.members}
        notes = "\n".join(status.notes)
        for label in ("member0", "member2"):  # member1 had no server left
            assert f"{label}: its server used the lab's one token directory; started again" in notes
        assert "member1: its server" not in notes
        for m in lab.members():
            own = lab.directory / f"m{m.index}" / "tokens"
            tokens = [p.name for p in own.iterdir()]
            assert len(tokens) == 1 and tokens[0] in moved
            assert f"{m.label}: token moved from {lab.directory}/tokens/{tokens[0]} to " \
                f"{own}/{tokens[0]}" in notes
            assert m.softhsm2_conf.is_file()
        assert "softhsm2.conf: removed with tokens/" in notes
        assert not (lab.directory / "tokens").exists() and not shared_conf.exists()
        assert lab.list_tokens() == [[{"label": m.label, "serial": m.serial}]
                                     for m in lab.members()]
        for m in lab.members():
            fresh = member_client(lab, m.label)
            found = fresh.call("[k.label for k in session.get_objects({Attribute.CLASS: "
                               "ObjectClass.SECRET_KEY})]")
            assert found == {"value": repr([f"kept-{m.index}"])}
        # up to date: a second up has nothing to say
        again = lab.up()
        assert again.notes == () and again.started == ()
    finally:
        lab.down(purge=True)


def test_up_leaves_a_token_of_no_member_where_it_is(tmp_path: Path) -> None:
    """A token in an older lab's DIR/tokens that is no member's (here: a second
    copy of member0's, whose own is already in place) is not moved and not
    deleted; a move an earlier `up` left half-way is finished."""
    lab = Lab(tmp_path / "lab", timeout=10.0)
    try:
        lab.up(members=2)
        lab.down()
        name0, name1 = (next(lab.tokens_dir_of(i).iterdir()).name for i in (0, 1))
        to_shared_layout(lab)
        shared = lab.directory / "tokens"
        token0, token1 = shared / name0, shared / name1
        spare = shared / "spare-copy"
        shutil.copytree(token0, spare)
        (shared / ".moving").mkdir()  # `up` was interrupted with token1 in its staging directory
        token1.rename(shared / ".moving" / token1.name)
        status = lab.up()
        assert status.all_running
        assert sorted(p.name for p in shared.iterdir()) == ["spare-copy"]
        assert (lab.directory / "softhsm2.conf").is_file()
        assert status.notes[-1].startswith(
            f"{shared}: left as it is, with softhsm2.conf: it holds spare-copy")
        assert [p.name for p in lab.tokens_dir_of(0).iterdir()] == [name0]
        assert [p.name for p in lab.tokens_dir_of(1).iterdir()] == [name1]
        assert lab.list_tokens() == [[{"label": m.label, "serial": m.serial}]
                                     for m in lab.members()]
        assert lab.up().notes == ()  # every member has its token: nothing more to do
    finally:
        lab.down(purge=True)


# --------------------------------------------------------------------------- secrets


def test_pins_never_leave_the_pin_files(lab: Lab) -> None:
    secrets = [lab.pin(), lab.so_pin()]
    texts = [
        lab.state_file.read_text(),
        lab.conf_path.read_text(),
        *(m.softhsm2_conf.read_text() for m in lab.members()),
        lab.status().to_json(),
        repr(lab.status()),
        *(p.read_text() for p in lab.directory.glob("m*/server.log")),
        *(" ".join(proc_cmdline(m.pid)) for m in lab.status().members),
    ]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_servers_and_their_children_hold_no_pin_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, member_client
) -> None:
    """PINs exported by the caller never reach a server or a p11-kit-remote child."""
    secrets = {
        "HACLI_PIN": "pin-" + os.urandom(8).hex(),
        "HACLI_SO_PIN": "so-pin-" + os.urandom(8).hex(),
        "HACLI_OTHER_PIN_FILE": "other-" + os.urandom(8).hex(),
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    lab = Lab(tmp_path / "lab", timeout=10.0)
    try:
        status = lab.up(members=1)
        pid = status.members[0].pid
        client = member_client(lab, "member0", login=False)  # a connection: a remote child
        assert client.call("len(lib.get_slots())") == {"value": "1"}
        assert wait_until(lambda: len(group_pids(pid)) >= 2, 10)
        pids = group_pids(pid)
        assert any("p11-kit-remote" in os.readlink(f"/proc/{p}/exe") for p in pids)
        for p in pids:
            environ = Path(f"/proc/{p}/environ").read_bytes()
            names = {e.split(b"=", 1)[0] for e in environ.split(b"\0") if e}
            # really the process's environment (the lab sets this one: the
            # member's own SoftHSM2 configuration), and no PIN in it
            assert f"SOFTHSM2_CONF={lab.softhsm2_conf_of(0)}".encode() in environ.split(b"\0")
            assert not [n for n in names if b"PIN" in n.upper()], (p, names)
            for value in [*secrets.values(), lab.pin(), lab.so_pin()]:
                assert value.encode() not in environ, p
    finally:
        lab.down(purge=True)


def test_probe_environment_holds_no_pin_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HACLI_PIN", "1234")
    monkeypatch.setenv("HACLI_SO_PIN", "5678")
    monkeypatch.setenv("PIN", "9")
    monkeypatch.setenv("LC_PIN", "9")
    monkeypatch.setenv("SOFTHSM2_CONF", "/elsewhere")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib")
    env = clean_env()
    assert env["PATH"] == os.environ["PATH"]
    assert not [k for k in env if "PIN" in k.upper()]
    assert "SOFTHSM2_CONF" not in env and "LD_LIBRARY_PATH" not in env
    assert clean_env({"SOFTHSM2_CONF": "x"})["SOFTHSM2_CONF"] == "x"


def _records(lab: Lab) -> list[dict]:
    return json.loads(lab.state_file.read_text())["members"]


def _pc_version(prefix: Path) -> str:
    text = (prefix / "lib/pkgconfig/p11-kit-1.pc").read_text()
    return re.search(r"^Version:\s*(\S+)$", text, re.MULTILINE).group(1)


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


@pytest.fixture
def fresh_tools(monkeypatch: pytest.MonkeyPatch):
    """Let a test point the lab at other binaries (the lookup is cached per process)."""
    find_tools.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    find_tools.cache_clear()


def test_missing_softhsm_is_one_clear_error(tmp_path: Path, fresh_tools) -> None:
    fresh_tools.setenv("HACLI_SOFTHSM2_MODULE", str(tmp_path / "nope.so"))
    with pytest.raises(LabError, match=r"HACLI_SOFTHSM2_MODULE=.* is not a file"):
        Lab(tmp_path / "lab").up()
    assert not (tmp_path / "lab").exists()


def _fake_prefix(root: Path, command: str) -> Path:
    """A prefix that has the build's layout, with *command* as its p11-kit."""
    (root / "bin").mkdir(parents=True)
    (root / "lib/pkcs11").mkdir(parents=True)
    (root / "bin/p11-kit").write_text(f"#!/bin/sh\n{command}\n")
    (root / "bin/p11-kit").chmod(0o755)
    shutil.copyfile(find_tools().p11kit_client, root / "lib/pkcs11/p11-kit-client.so")
    find_tools.cache_clear()  # the caller is about to point the lookup elsewhere
    return root


def test_server_that_will_not_start_leaves_no_trace(tmp_path: Path, fresh_tools) -> None:
    # a p11-kit that exits at once, like a broken build
    prefix = _fake_prefix(tmp_path / "broken", "echo broken build >&2; exit 1")
    fresh_tools.setenv("HACLI_P11KIT_PREFIX", str(prefix))
    assert find_tools().p11kit == str(prefix / "bin/p11-kit")
    assert find_tools().p11kit_version == "unknown"  # no pkg-config file there
    lab = Lab(tmp_path / "lab", timeout=5.0)
    with pytest.raises(LabError, match="p11-kit server of member0 exited: broken build"):
        lab.up()
    assert not lab.directory.exists()


def test_up_refuses_a_build_whose_client_drops_key_wrap(tmp_path: Path, fresh_tools) -> None:
    """A prefix whose client is really 0.24.1 (as a build linked against the system
    library would be): `up` stops with the mechanism error and leaves nothing."""
    assert os.path.isfile(SYSTEM_CLIENT), "Debian's p11-kit-modules is needed (make deps)"
    real = find_tools().p11kit
    prefix = _fake_prefix(tmp_path / "mixed", f'exec {real} "$@"')
    shutil.copyfile(SYSTEM_CLIENT, prefix / "lib/pkcs11/p11-kit-client.so")
    fresh_tools.setenv("HACLI_P11KIT_PREFIX", str(prefix))
    lab = Lab(tmp_path / "lab", timeout=10.0)
    with pytest.raises(LabError) as info:
        lab.up(members=1)
    assert str(info.value).startswith(
        f"member0: the p11-kit client at {prefix}/lib/pkcs11/p11-kit-client.so does not "
        "forward CKM_AES_KEY_WRAP_PAD or CKM_AES_CBC_PAD; "
    )
    assert not lab.directory.exists()
    assert not [p for p in _all_pids() if str(lab.directory) in " ".join(proc_cmdline(p))]


def test_missing_p11kit_build_is_one_clear_error(tmp_path: Path, fresh_tools) -> None:
    fresh_tools.setenv("HACLI_P11KIT_PREFIX", str(tmp_path / "nobuild"))
    with pytest.raises(LabError) as info:
        Lab(tmp_path / "lab").up()
    message = str(info.value)
    assert "p11-kit build was not found" in message and str(tmp_path / "nobuild") in message
    assert "make install" in message and "HACLI_P11KIT_PREFIX" in message
    assert "\n" not in message
    assert not (tmp_path / "lab").exists()
    # the system's p11-kit is never a fallback, even when it is installed
    assert os.path.isfile("/usr/bin/p11-kit")


def test_p11kit_prefix_lookup_order(tmp_path: Path, fresh_tools) -> None:
    checkout = Path(__file__).resolve().parent.parent
    installed = _fake_prefix(tmp_path / "p11-kit", "exit 0")
    fresh_tools.delenv("HACLI_P11KIT_PREFIX", raising=False)
    fresh_tools.setattr(sys, "prefix", str(tmp_path))
    # 2. the checkout's prefix before 3. sys.prefix/p11-kit
    assert tools.checkout_dir() == checkout
    assert tools.p11kit_prefixes() == [
        ("the checkout", checkout / ".venv" / "p11-kit"),
        ("sys.prefix", installed),
    ]
    assert find_tools().p11kit_prefix == str(checkout / ".venv" / "p11-kit")
    # an installed package (no checkout): the prefix next to it
    find_tools.cache_clear()
    fresh_tools.setattr(tools, "checkout_dir", lambda: None)
    assert find_tools().p11kit_prefix == str(installed)
    # 1. the variable wins, and is then the only place looked at
    find_tools.cache_clear()
    other = _fake_prefix(tmp_path / "other", "exit 0")
    (other / "lib/pkgconfig").mkdir()
    (other / "lib/pkgconfig/p11-kit-1.pc").write_text("Name: p11-kit\nVersion: 9.8.7\n")
    fresh_tools.setenv("HACLI_P11KIT_PREFIX", str(other))
    assert tools.p11kit_prefixes() == [("$HACLI_P11KIT_PREFIX", other)]
    found = find_tools()
    assert (found.p11kit_prefix, found.p11kit_version) == (str(other), "9.8.7")
    assert found.p11kit_client == str(other / "lib/pkcs11/p11-kit-client.so")


# --------------------------------------------------------------------------- frozen member's locks

#: Runs forever in a member client (its call comes back "blocked"): token objects
#: made and destroyed, so the member's SoftHSM2 takes its file locks again and again.
_WRITE_LOAD = """
while True:
    session.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: 'lock-load',
                           Attribute.VALUE: b'x', Attribute.TOKEN: True}).destroy()
"""


def _posix_locks_of(pids: set[int]) -> set[int]:
    """Inodes of the files a POSIX lock of one of *pids* holds (from /proc/locks)."""
    inodes = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] != "->" and fields[1] == "POSIX" and int(fields[4]) in pids:
            inodes.add(int(fields[5].rsplit(":", 1)[1]))
    return inodes


def _freeze_holding_a_token_lock(lab: Lab, which: str) -> None:
    """``hang`` *which* at a moment one of its processes holds a SoftHSM2 file lock
    on a file of the lab (the member is under write load): restore and hang again
    until it does, so the test does not depend on luck."""
    lab_files = {p.stat().st_ino for p in lab.directory.rglob("*") if p.is_file()}
    for _ in range(200):
        pid = lab.hang(which).pid
        assert pid
        if _posix_locks_of(set(group_pids(pid))) & lab_files:
            return
        lab.restore(which)
    pytest.fail(f"{which} never held a file lock when frozen")


def test_a_frozen_member_holding_its_token_lock_blocks_no_other_member(
    healthy_lab: Lab, member_client
) -> None:
    """A frozen member's SoftHSM2 keeps the file lock it held; no other member's
    SoftHSM2 ever waits for it.  (With one token directory for all members, every
    new SoftHSM2 instance scanned the frozen member's token at C_Initialize and
    blocked: `restore` of another member timed out, `softhsm2-util` hung.)"""
    lab = healthy_lab
    m0, m1 = lab.members()
    before = set(group_pids(lab.status().member(m1.label).pid))  # the server, any other client's
    load = member_client(lab, m1.label)
    assert load.call(_WRITE_LOAD, timeout=0.2) == {"blocked": True}
    try:
        _freeze_holding_a_token_lock(lab, m1.label)
        # a new SoftHSM2 instance on member0's own configuration answers at once
        conf0 = lab.member_softhsm2_conf(m0.label)
        slots = subprocess.run(
            ["softhsm2-util", "--show-slots"],
            env={**os.environ, "SOFTHSM2_CONF": str(conf0)},
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        assert m0.serial in slots and m1.serial not in slots
        listed = subprocess.run(
            ["pkcs11-tool", "--module", find_tools().softhsm2, "-L"],
            env={**os.environ, "SOFTHSM2_CONF": str(conf0)},
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        assert m0.label in listed
        # and member0 crashes and comes back promptly (its server's new
        # connection child loads SoftHSM2 again)
        lab.fail(m0.label)
        restored = lab.restore(m0.label)
        assert restored.state == RUNNING
        assert lab.list_tokens(m0.label) == [[{"label": m0.label, "serial": m0.serial}]]
        assert lab.status().member(m1.label).state == HUNG
    finally:
        load.close()  # killed: its call is blocked in the frozen member
        pid = lab.restore(m1.label).pid
        # its connection child finishes the call it was frozen in, and exits
        assert wait_until(lambda: set(group_pids(pid)) <= before, 10)
        cleaner = member_client(lab, m1.label)
        cleaner.destroy_labelled("lock-load")
        assert cleaner.call("len(list(session.get_objects({Attribute.LABEL: 'lock-load'})))") \
            == {"value": "0"}
