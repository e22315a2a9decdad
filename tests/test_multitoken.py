"""`hacli multitoken` on the lab: every mode, through the HA slot and directly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pexpect
import pytest
from clihelpers import HACLI, assert_one_error_line, run_process
from conftest import MemberClient

from hacli.lab import Lab

CONTRACT = {"mode", "slot", "threads", "seconds", "ops", "errors", "ops_per_s", "p50_ms",
            "p99_ms", "per_member"}


def multitoken(lab: Lab, *args: str) -> dict:
    res = run_process("--conf", str(lab.conf_path), "multitoken", "--json", *args)
    assert res.code == 0, res.err
    return json.loads(res.out)


@pytest.mark.parametrize("mode", ["rsasign", "ecsign", "aesenc", "random"])
def test_every_mode_through_the_ha_slot(lab: Lab, mode: str) -> None:
    out = multitoken(lab, "--mode", mode, "--threads", "2", "--seconds", "0.5")
    assert set(out) == CONTRACT
    assert out["mode"] == mode and out["slot"] == "ha" and out["threads"] == 2
    assert out["errors"] == 0 and out["ops"] > 10
    assert out["p99_ms"] >= out["p50_ms"] > 0
    serials = [m.serial for m in lab.members()]
    assert sorted(out["per_member"]) == sorted(serials)
    assert all(n > 0 for n in out["per_member"].values())  # the load was balanced


def test_direct_member_bypasses_the_group(lab: Lab) -> None:
    serial = lab.members()[1].serial
    out = multitoken(lab, "--mode", "rsasign", "--slot", serial, "--threads", "1",
                     "--seconds", "0.5")
    assert out["slot"] == serial and out["errors"] == 0
    assert out["per_member"] == {serial: out["ops"]}


def test_bad_slot_and_pin(lab: Lab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_process("--conf", str(lab.conf_path), "multitoken", "--slot", "nosuch")
    assert_one_error_line(res, 2)
    bad = tmp_path / "pin"
    bad.write_text("not-the-pin\n")
    res = run_process("--conf", str(lab.conf_path), "multitoken", "--pin-file", str(bad),
                      "--seconds", "0.2")
    assert res.code != 0 and "CKR_PIN_INCORRECT" in res.err and "Traceback" not in res.err
    assert "not-the-pin" not in res.err


# ---- issue 10: keys on every member, failures exit 1, Ctrl-C ------------------------------

AES_KEY = "hacli-multitoken-aes256"


def aes_keys_on(client: MemberClient) -> int:
    got = client.call(f"_ = len(list(session.get_objects({{Attribute.LABEL: {AES_KEY!r}, "
                      "Attribute.CLASS: ObjectClass.SECRET_KEY})))")
    assert "value" in got, got
    return int(got["value"])


def test_a_key_made_on_one_member_is_made_again_on_every_member(
        healthy_lab: Lab, member_client: Callable[..., MemberClient]) -> None:
    """The test key made through --slot SERIAL exists on that member only; the
    HA slot must not load it as it is (calls the other member gets fail over or
    fail), but have one key on every member."""
    clients = [member_client(healthy_lab, m.label) for m in healthy_lab.members()]
    for client in clients:
        client.destroy_labelled(AES_KEY)
    one = healthy_lab.members()[1].serial
    multitoken(healthy_lab, "--mode", "aesenc", "--slot", one, "--threads", "1",
               "--seconds", "0.2")
    assert [aes_keys_on(c) for c in clients] == [0, 1]

    out = multitoken(healthy_lab, "--mode", "aesenc", "--threads", "2", "--seconds", "0.5")
    assert out["errors"] == 0
    assert [aes_keys_on(c) for c in clients] == [1, 1]
    assert all(n > 0 for n in out["per_member"].values())  # both served: both hold it


def spawn_load(lab: Lab, *args: str) -> pexpect.spawn:
    """``hacli multitoken ARGS`` in a terminal, once its timed part has begun."""
    child = pexpect.spawn(HACLI, ["--conf", str(lab.conf_path), "multitoken", *args],
                          encoding="utf-8", timeout=30)
    child.expect_exact("Ctrl-C stops early")
    return child


def finish(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in child.before and "Aborted" not in child.before
    return int(child.exitstatus)


def test_a_run_with_errors_exits_1(healthy_lab: Lab) -> None:
    child = spawn_load(healthy_lab, "--mode", "random", "--threads", "2", "--seconds", "2",
                       "--json")
    for m in healthy_lab.members():  # every member down while the load runs
        healthy_lab.fail(m.serial)
    assert finish(child) == 1
    text = child.before
    figures = json.loads(text[text.index("{"): text.rindex("}") + 1])
    assert figures["errors"] > 0
    errors = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "calls failed" in errors[0] and "CKR_DEVICE_ERROR" in errors[0]


def test_ctrl_c_prints_the_results_so_far_and_exits_130(lab: Lab) -> None:
    child = spawn_load(lab, "--mode", "random", "--threads", "2", "--seconds", "60")
    child.sendintr()
    assert finish(child) == 130
    assert re.search(r"operations : [1-9]", child.before)
    assert "interrupted by Ctrl-C" in child.before and "Error" not in child.before
