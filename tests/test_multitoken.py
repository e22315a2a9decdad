"""`hacli multitoken` on the lab: every mode, through the HA slot and directly."""

from __future__ import annotations

import json

import pytest
from clihelpers import assert_one_error_line, run_process

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
