"""hagroup commands against live lab members: probing, transport key, HA log events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from clihelpers import assert_one_error_line, run_process

from hacli.lab import Lab


def listgroups(conf: Path) -> dict:
    res = run_process("--conf", str(conf), "hagroup", "listgroups", "--json")
    assert res.code == 0, res.err
    return json.loads(res.out)


def test_listgroups_shows_live_member_status(healthy_lab: Lab) -> None:
    first, second = healthy_lab.members()
    members = listgroups(healthy_lab.conf_path)["groups"][0]["members"]
    assert [(m["serial"], m["status"], m["label"]) for m in members] == [
        (first.serial, "alive", first.label), (second.serial, "alive", second.label)]
    healthy_lab.fail(second.serial)
    members = listgroups(healthy_lab.conf_path)["groups"][0]["members"]
    assert [m["status"] for m in members] == ["alive", "down"]
    human = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "listgroups")
    assert "member0" in human.out and "down" in human.out
    assert "HA Group Slot ID : 3" in human.out  # as the menu numbers it: slot#3
    assert "Needs sync : " in human.out  # the lab's PIN is a PIN source
    offline = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "listgroups",
                          "--no-probe", "--json")
    assert {m["status"] for m in json.loads(offline.out)["groups"][0]["members"]} == {"unknown"}


def test_group_membership_sets_up_transport_key_and_logs(lab3: Lab, tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    shutil.copyfile(lab3.conf_path, conf)
    log_dir = tmp_path / "log"
    s0, s1, s2 = (m.serial for m in lab3.members())
    c = ["--conf", str(conf), "hagroup"]
    assert run_process(*c, "halog", "--enable", "--path", str(log_dir)).code == 0
    assert run_process(*c, "deletegroup", "--label", "labgroup").code == 0

    before = conf.read_bytes()
    bad_pin = tmp_path / "so-pin"
    bad_pin.write_text("wrong-so-pin\n")
    bad_pin.chmod(0o600)  # private, as a PIN file should be (else one warning line too)
    res = run_process(*c, "creategroup", "--label", "g2", "--members", f"{s0},{s1}",
                      "--so-pin-file", str(bad_pin))
    assert_one_error_line(res, 1)
    assert "wrong-so-pin" not in res.err
    assert conf.read_bytes() == before  # refused: nothing written

    res = run_process(*c, "creategroup", "--label", "g2", "--members", f"{s0},{s1}", "--json")
    assert res.code == 0, res.err
    keys = json.loads(res.out)["transport_key"]
    assert set(keys) == {s0, s1} and set(keys.values()) <= {"present", "created", "copied"}

    res = run_process(*c, "addmember", "--group", "g2", "--serial", s2, "--json")
    assert res.code == 0, res.err
    assert s2 in json.loads(res.out)["transport_key"]
    assert run_process(*c, "removemember", "--group", "g2", "--serial", s0).code == 0
    events = [line.split()[1:4] for line in (log_dir / "haErrorLog.txt").read_text().splitlines()]
    assert ["g2", s2, "added"] in events and ["g2", s0, "removed"] in events
    assert lab3.pin() not in (log_dir / "haErrorLog.txt").read_text()


def test_needs_sync_and_synchronize(healthy_lab: Lab, member_client) -> None:  # type: ignore[no-untyped-def]
    m0, m1 = (m.serial for m in healthy_lab.members())
    label = "cli-sync-probe"
    c1 = member_client(healthy_lab, "member1")
    c1.create_data(label, b"hello")
    c0 = member_client(healthy_lab, "member0")
    count = f"len(list(session.get_objects({{Attribute.LABEL: {label!r}}})))"
    try:
        members = listgroups(healthy_lab.conf_path)["groups"][0]["members"]
        assert {m["serial"]: m["needs_sync"] for m in members} == {m0: True, m1: False}
        # made outside the group: a conflict, reported (exit 1), nothing copied
        plan = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "synchronize",
                           "--dry-run")
        assert plan.code == 1 and "plan only, nothing changed" in plan.out
        assert f"Conflict: CKO_DATA {label!r}" in plan.out or "Conflict:" in plan.out
        res = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "synchronize")
        assert res.code == 1 and "NOT in sync" in res.out and c0.call(count)["value"] == "0"
        res = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "synchronize",
                          "--adopt", "--json")
        assert res.code == 0, res.err
        report = json.loads(res.out)
        assert report["complete"] and [(c["serial"], c["object"]["label"])
                                       for c in report["copied"]] == [(m0, label)]
        assert c0.call(count)["value"] == "1"
        members = listgroups(healthy_lab.conf_path)["groups"][0]["members"]
        assert {m["needs_sync"] for m in members} == {False}
        again = run_process("--conf", str(healthy_lab.conf_path), "hagroup", "synchronize")
        assert again.code == 0 and "0 object(s) copied, 0 destroyed; in sync" in again.out
    finally:
        for client in (c0, c1):
            client.destroy_labelled(label)


def test_recover_reports_each_member_and_fails_while_one_is_down(healthy_lab: Lab) -> None:
    """`hagroup recover` runs its own engine: a member that is still down is
    tried once more and reported (exit 1); once it is back, every member is in
    service for a new process (exit 0)."""
    m0, m1 = (m.serial for m in healthy_lab.members())
    c = ["--conf", str(healthy_lab.conf_path), "hagroup", "recover",
         "--group", healthy_lab.group_label]
    healthy_lab.fail(m1)
    res = run_process(*c)
    assert res.code == 1, res.err
    assert f"HSM {m0} - in service" in res.out and f"HSM {m1} - still down (CKR_" in res.out
    healthy_lab.restore(m1)
    res = run_process(*c, "--serial", m1, "--json")
    assert res.code == 0, res.err
    assert json.loads(res.out) == {"group": healthy_lab.group_label, "members": [
        {"serial": m1, "outcome": "in-service", "ckr": None}]}
    assert_one_error_line(run_process(*c, "--serial", "nosuch"), 2)
