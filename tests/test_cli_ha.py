"""`hacli ha status` on a real lab: the origin document's transcript, run by run."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clihelpers import run_process

from hacli.lab import Lab


def status(lab: Lab, state: Path, *extra: str) -> tuple[int, dict]:
    res = run_process("--conf", str(lab.conf_path), "ha", "status", "--json", *extra,
                      env={"XDG_STATE_HOME": str(state)})
    assert "Traceback" not in res.err
    return res.code, json.loads(res.out) if res.out else {}


def member_states(doc: dict) -> list[str]:
    return [m["status"] for m in doc["groups"][0]["members"]]


def test_origin_document_scenario_through_ha_status(healthy_lab: Lab, tmp_path: Path) -> None:
    first, second = healthy_lab.members()
    code, doc = status(healthy_lab, tmp_path)
    assert code == 0
    group = doc["groups"][0]
    assert group["label"] == "labgroup" and group["serial"] == "1" + first.serial
    assert [m["serial"] for m in group["members"]] == [first.serial, second.serial]
    assert member_states(doc) == ["CKR_OK", "CKR_OK"] and group["status"] == "CKR_OK"

    healthy_lab.fail(first.serial)
    code, doc = status(healthy_lab, tmp_path)
    assert (code, member_states(doc)) == (3, ["CKR_DEVICE_ERROR", "CKR_OK"])
    assert doc["groups"][0]["status"] == "CKR_OK"
    code, doc = status(healthy_lab, tmp_path)
    assert (code, member_states(doc)) == (3, ["CKR_TOKEN_NOT_PRESENT", "CKR_OK"])

    healthy_lab.fail(second.serial)
    code, doc = status(healthy_lab, tmp_path)
    assert code == 4
    assert member_states(doc) == ["CKR_TOKEN_NOT_PRESENT", "CKR_DEVICE_ERROR"]
    assert doc["groups"][0]["status"] == "CKR_DEVICE_ERROR"

    healthy_lab.restore(first.serial)
    healthy_lab.restore(second.serial)
    code, doc = status(healthy_lab, tmp_path)
    assert (code, member_states(doc)) == (0, ["CKR_OK", "CKR_OK"])
    # back in service: the next failure is a first report again
    healthy_lab.fail(second.serial)
    assert member_states(status(healthy_lab, tmp_path)[1]) == ["CKR_OK", "CKR_DEVICE_ERROR"]


def test_frozen_member_costs_about_the_timeout(healthy_lab: Lab, tmp_path: Path) -> None:
    first, _second = healthy_lab.members()
    healthy_lab.hang(first.serial)
    t0 = time.monotonic()
    code, doc = status(healthy_lab, tmp_path)
    elapsed = time.monotonic() - t0
    assert (code, member_states(doc)) == (3, ["CKR_DEVICE_ERROR", "CKR_OK"])
    assert elapsed < 3.0 + 5.0  # lab ReceiveTimeout is 3 s; process start-up on top


def test_human_output_and_unknown_group(healthy_lab: Lab, tmp_path: Path) -> None:
    res = run_process("--conf", str(healthy_lab.conf_path), "ha", "status",
                      env={"XDG_STATE_HOME": str(tmp_path)})
    assert res.code == 0, res.err
    assert "CKR_OK" in res.out and "Status: Doing great, no errors (CKR_OK)" in res.out
    res = run_process("--conf", str(healthy_lab.conf_path), "ha", "status", "--group", "x",
                      env={"XDG_STATE_HOME": str(tmp_path)})
    assert res.code == 2 and res.err.startswith("Error: ") and "Traceback" not in res.err
