"""`hacli ha status` on a real lab: the origin document's transcript, run by run."""

from __future__ import annotations

import json
import time
from datetime import datetime
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


# ---- issue 10: the summary line, reasons, recovery state, the HA log, configuration errors


def private_conf(lab: Lab, tmp_path: Path, **replace: str) -> Path:
    """A copy of the lab's configuration with its own HA log directory (the
    session's lab is shared) and the lines starting with each key replaced."""
    replace.setdefault("haLogPath", str(tmp_path / "log"))
    lines = []
    for line in lab.conf_path.read_text().splitlines(True):
        key = line.strip().split(" ", 1)[0]
        lines.append(f"   {key} = {replace[key]};\n" if key in replace else line)
    conf = tmp_path / "Chrystoki.conf"
    conf.write_text("".join(lines))
    return conf


def run_status(conf: Path, state: Path, *extra: str) -> tuple[int, str, str]:
    res = run_process("--conf", str(conf), "ha", "status", *extra,
                      env={"XDG_STATE_HOME": str(state)})
    assert "Traceback" not in res.err
    return res.code, res.out, res.err


def test_degraded_story_recovery_state_and_one_failed_line(healthy_lab: Lab,
                                                           tmp_path: Path) -> None:
    first, second = healthy_lab.members()
    conf = private_conf(healthy_lab, tmp_path, reconnAtt="2")
    state = tmp_path / "state"
    healthy_lab.fail(first.serial)

    code, out, _ = run_status(conf, state, "--json")
    assert code == 3
    down, up = json.loads(out)["groups"][0]["members"]
    assert (down["status"], up["status"]) == ("CKR_DEVICE_ERROR", "CKR_OK")
    assert up["reason"] == "in service" and "down_since" not in up
    assert down["reason"].startswith("CKR_")
    assert (down["attempts_used"], down["attempts_left"]) == (0, 2)  # reconnAtt 2, none made
    since = datetime.fromisoformat(down["down_since"])
    assert datetime.fromisoformat(down["next_attempt"]) > since  # AutoReconnectInterval later

    code, out, _ = run_status(conf, state)
    assert code == 3
    assert "Status: degraded: 1 of 2 members down (CKR_OK)" in out
    assert "Doing great" not in out
    assert f"{first.serial}  CKR_TOKEN_NOT_PRESENT" in out  # the member's line stays

    code, out, _ = run_status(conf, state, "--json")
    again = json.loads(out)["groups"][0]["members"][0]
    assert again["down_since"] == down["down_since"]  # down since the first run saw it

    log = tmp_path / "log" / "haErrorLog.txt"
    events = [line.split()[2:4] for line in log.read_text().splitlines()]
    assert events == [[first.serial, "failed"]]  # three runs, one failure, one line

    healthy_lab.restore(first.serial)
    assert run_status(conf, state)[0] == 0
    assert run_status(conf, state)[0] == 0
    events = [line.split()[2:4] for line in log.read_text().splitlines()]
    assert events == [[first.serial, "failed"], [first.serial, "recovered"]]

    healthy_lab.fail(first.serial)
    healthy_lab.fail(second.serial)
    code, out, _ = run_status(conf, state)
    assert code == 4
    assert "Status: group down: 2 of 2 members down (CKR_DEVICE_ERROR)" in out


def test_missing_module_is_a_configuration_error(lab: Lab, tmp_path: Path) -> None:
    first, _second = lab.members()
    missing = tmp_path / "gone" / "libp11-kit-client.so"
    conf = private_conf(lab, tmp_path, Member00Library=str(missing))
    code, out, err = run_status(conf, tmp_path / "state")
    assert code == 1
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: ")
    assert first.serial in errors[0] and f"module {missing} not found" in errors[0]
    assert f"module {missing} not found" in out  # the status is still shown
    code, out, err = run_status(conf, tmp_path / "state", "--json")
    assert code == 1
    member = json.loads(out)["groups"][0]["members"][0]
    assert member["serial"] == first.serial and member["reason"] == f"module {missing} not found"
