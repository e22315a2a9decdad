"""Engine unit tests: recovery policy (fake clock), CKR mapping, HA log. No PKCS#11."""

from __future__ import annotations

import re

import pkcs11.exceptions as px
import pytest

from hacli.engine import RecoveryPolicy, ckr_name, is_member_failure
from hacli.engine.exceptions import CallTimeout, CKRError, GroupDownError
from hacli.engine.halog import LOG_NAME, HALog


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def run_calls(policy: RecoveryPolicy, outcome: dict[str, bool], clock: FakeClock,
              seconds: float, step: float = 0.5) -> list[str]:
    """Simulate application calls every ``step`` s; return the members attempted."""
    attempted = []
    end = clock.t + seconds
    while clock.t < end:
        clock.advance(step)
        m = policy.due()
        if m is not None:
            attempted.append(m)
            policy.record(m, outcome.get(m, False))
    return attempted


def test_policy_zero_never_attempts() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=0, interval=1, clock=clock)
    p.member_down("a")
    assert run_calls(p, {}, clock, 100) == []


def test_policy_stops_after_n_failures() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=3, interval=10, clock=clock)
    p.member_down("a")
    assert run_calls(p, {}, clock, 1000) == ["a", "a", "a"]
    assert p.attempts == 3


def test_policy_forever_and_interval() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=-1, interval=10, clock=clock)
    p.member_down("a")
    # no attempt before X has passed since the failure
    clock.advance(10)
    assert p.due() is None
    clock.advance(0.01)
    assert p.due() == "a"
    p.record("a", False)
    clock.advance(5)
    assert p.due() is None
    # attempts keep coming every X seconds, forever
    assert len(run_calls(p, {}, clock, 1000, step=1)) >= 80


def test_policy_success_resets_count_and_longest_down_first() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=3, interval=1, clock=clock)
    p.member_down("old")
    clock.advance(5)
    p.member_down("new")
    clock.advance(1.5)
    assert p.due() == "old"  # one member per attempt, the one down longest
    p.record("old", False)
    p.record("old", False)
    assert p.attempts == 2
    clock.advance(1.5)
    assert p.due() == "old"
    p.record("old", True)
    assert p.attempts == 0
    assert set(p.disconnected) == {"new"}
    assert p.due() is None  # last attempt just now
    clock.advance(1.5)
    assert p.due() == "new"


def test_policy_last_attempt_starts_at_failure() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=-1, interval=60, clock=clock)
    assert p.due() is None  # nothing disconnected
    clock.advance(1000)
    p.member_down("a")
    clock.advance(59)
    assert p.due() is None
    clock.advance(2)
    assert p.due() == "a"


def test_ckr_names() -> None:
    assert ckr_name(px.DeviceError()) == "CKR_DEVICE_ERROR"
    assert ckr_name(px.TokenNotPresent()) == "CKR_TOKEN_NOT_PRESENT"
    assert ckr_name(px.MechanismInvalid()) == "CKR_MECHANISM_INVALID"
    assert ckr_name(px.PinIncorrect()) == "CKR_PIN_INCORRECT"
    assert ckr_name(px.PKCS11Error("Unmapped error code 0x00000190")) == \
        "CKR_CRYPTOKI_NOT_INITIALIZED"
    assert ckr_name(0x30) == "CKR_DEVICE_ERROR"
    assert ckr_name(None) == "CKR_OK"
    assert ckr_name(CKRError("CKR_DATA_LEN_RANGE", "C_Encrypt")) == "CKR_DATA_LEN_RANGE"
    assert ckr_name(CallTimeout("C_Sign", "m", 1.0)) == "CKR_DEVICE_ERROR"
    assert ckr_name(GroupDownError("C_Sign", "g")) == "CKR_DEVICE_ERROR"


def test_member_failure_classification() -> None:
    for e in (px.DeviceError(), px.DeviceRemoved(), px.TokenNotPresent(),
              px.SessionHandleInvalid(), px.SessionClosed(), CallTimeout("x", "m", 1)):
        assert is_member_failure(e), e
    for e in (px.MechanismInvalid(), px.PinIncorrect(), px.KeyHandleInvalid(),
              px.DataLenRange(), px.ObjectHandleInvalid(), AttributeError("sign"),
              TypeError("x")):
        assert not is_member_failure(e), e


def test_halog_format_and_rotation(tmp_path) -> None:
    log = HALog(tmp_path, log_len=200)
    line = log.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")
    assert re.fullmatch(r"\S+ grp 1234 failed CKR_DEVICE_ERROR", line)
    log.event("grp", "1234", "recovered")
    text = (tmp_path / LOG_NAME).read_text()
    assert text.splitlines()[1].endswith(" grp 1234 recovered -")
    for _ in range(10):
        log.event("grp", "1234", "recovery-failed", "CKR_TOKEN_NOT_PRESENT")
    rotated = [p for p in tmp_path.iterdir() if p.name.startswith(LOG_NAME + ".")]
    assert rotated
    assert (tmp_path / LOG_NAME).stat().st_size <= 200
    with pytest.raises(ValueError):
        log.event("grp", "1", "exploded")
