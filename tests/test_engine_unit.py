"""Engine unit tests: recovery policy (fake clock), CKR mapping, HA log, the multi-part
step driver, error classes, error texts. No PKCS#11."""

from __future__ import annotations

import re

import pkcs11.exceptions as px
import pytest
from enginehelpers import FakeClock
from pkcs11 import Attribute

from hacli.engine import RecoveryPolicy, ckr_name, is_member_failure
from hacli.engine.exceptions import CallTimeout, CKRError, GroupDownError
from hacli.engine.halog import LOG_NAME, HALog
from hacli.engine.multipart import StepDriver


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
    assert p.attempts == 3 and p.attempts_left("a") == 0


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


def test_policy_counts_per_member_and_success_resets_it() -> None:
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=3, interval=1, clock=clock)
    p.member_down("old")
    clock.advance(5)
    p.member_down("new")
    clock.advance(1.5)
    assert p.due() == "old"  # one member per attempt: the one waiting longest
    p.record("old", False)
    assert p.due() == "new"  # its own timer: X has passed since it went down
    p.record("new", False)
    assert p.due() is None  # both attempted just now
    assert p.state_of("old").attempts == 1 and p.state_of("new").attempts == 1
    clock.advance(1.5)
    assert p.due() == "old"
    p.record("old", True)
    assert p.state_of("old") is None and set(p.disconnected) == {"new"}
    assert p.state_of("new").attempts == 1  # the other member's count is its own
    assert p.due() == "new"


def test_policy_a_dead_member_never_blocks_one_that_returns() -> None:
    """Issue 8, fault 2: with member0 dead for good, member1 fails later and comes
    back; it is tried in turn, not after member0 forever."""
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=-1, interval=1, clock=clock)
    p.member_down("member0")
    run_calls(p, {}, clock, 10)
    p.member_down("member1")
    attempted = run_calls(p, {"member1": True}, clock, 3)
    assert "member1" in attempted and "member1" not in p.disconnected
    assert set(p.disconnected) == {"member0"}


def test_policy_attempt_limit_is_per_member() -> None:
    """Issue 8, fault 3: member0 used its reconnAtt = 2 attempts; member1, which
    fails later and is restored, still gets its own two."""
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=2, interval=1, clock=clock)
    p.member_down("member0")
    assert run_calls(p, {}, clock, 20) == ["member0", "member0"]
    assert p.attempts_left("member0") == 0 and p.next_attempt("member0") is None
    p.member_down("member1")
    assert p.attempts_left("member1") == 2
    assert run_calls(p, {"member1": True}, clock, 5) == ["member1"]
    # a member that fails again later starts with a fresh count
    p.member_down("member1")
    assert p.attempts_left("member1") == 2
    assert p.next_attempt("member1") == clock.t + 1


def test_policy_failure_after_recovery_gets_a_fresh_record() -> None:
    """Issue 8, fault 4: a member that fails again right after its successful
    attempt (during its catch-up) stays in the policy and is tried again."""
    clock = FakeClock()
    p = RecoveryPolicy(max_attempts=-1, interval=1, clock=clock)
    p.member_down("m")
    clock.advance(2)
    assert p.due() == "m"
    p.record("m", True)
    p.member_down("m")  # the catch-up met a failure
    assert "m" in p.disconnected
    clock.advance(2)
    assert p.due() == "m"


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


def test_halog_writes_each_member_state_once_across_writers(tmp_path) -> None:
    """Issue 10: every `ha status` process starts an engine that finds the dead
    member and logs `failed`; the log keeps each member's last logged state so
    that the failure is logged once.  Two HALog objects stand for two processes
    (they share nothing but the directory)."""
    first, second = HALog(tmp_path), HALog(tmp_path)

    def events() -> list[str]:
        return [" ".join(line.split()[1:4]) for line in
                (tmp_path / LOG_NAME).read_text().splitlines()]

    assert first.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")
    assert second.event("grp", "1234", "failed", "CKR_TOKEN_NOT_PRESENT") == ""
    assert second.event("grp", "1234", "recovery-failed", "CKR_TOKEN_NOT_PRESENT")  # an attempt
    assert second.event("grp", "9999", "failed", "CKR_DEVICE_ERROR")  # another member
    assert second.seen_up("grp", "1234")  # found in service: it came back
    assert first.event("grp", "1234", "recovered") == ""  # already logged back
    assert first.seen_up("grp", "1234") == ""
    assert first.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")  # a new failure
    assert first.event("grp", "9999", "removed")
    assert second.event("grp", "9999", "failed", "CKR_DEVICE_ERROR")  # no state kept after removal
    assert events() == [
        "grp 1234 failed", "grp 1234 recovery-failed", "grp 9999 failed", "grp 1234 recovered",
        "grp 1234 failed", "grp 9999 removed", "grp 9999 failed",
    ]
    # a damaged state file costs at most one repeated line, never an error
    (tmp_path / ".haErrorLog.state").write_text("{not json")
    assert first.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")
    assert second.event("grp", "1234", "failed", "CKR_DEVICE_ERROR") == ""
    # one that cannot be opened keeps no state: events are written, as before
    (tmp_path / ".haErrorLog.state").unlink()
    (tmp_path / ".haErrorLog.state").mkdir()
    assert first.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")
    assert second.event("grp", "1234", "failed", "CKR_DEVICE_ERROR")


def test_halog_seen_up_without_any_failure_writes_nothing(tmp_path) -> None:
    log = HALog(tmp_path)
    assert log.seen_up("grp", "1234") == ""
    assert not (tmp_path / LOG_NAME).exists() and not (tmp_path / ".haErrorLog.state").exists()


# --------------------------------------------------------------------------- multi-part driver


def test_step_driver_runs_one_step_at_a_time() -> None:
    """The helper thread runs only between a step's hand-over and its next park."""
    log: list[str] = []

    def body(feed, emit):  # stands in for key.encrypt(chunks) in python-pkcs11
        log.append("init")
        total = b""
        for chunk in feed:
            log.append(f"update {chunk!r}")
            emit(chunk.upper())
            total += chunk
        log.append("final")
        emit(b"!")
        return total

    d = StepDriver(body)
    assert d.start() == [] and log == ["init"]
    assert d.feed(b"ab") == [b"AB"] and log[-1] == "update b'ab'"
    assert d.feed(b"") == [b""]
    assert log.count("final") == 0  # nothing runs between steps
    assert d.finish() == (b"ab", [b"!"])
    assert d.done


def test_step_driver_errors_and_abort() -> None:
    class Boom(Exception):
        pass

    def failing_init(feed, emit):
        raise Boom()

    with pytest.raises(Boom):
        StepDriver(failing_init).start()

    def failing_update(feed, emit):
        for chunk in feed:
            if chunk == b"bad":
                raise Boom()

    d = StepDriver(failing_update)
    d.start()
    with pytest.raises(Boom):
        d.feed(b"bad")
    assert d.done
    with pytest.raises(RuntimeError):
        d.feed(b"more")  # already ended

    ended: list[str] = []

    def cleanup(feed, emit):
        try:
            for _ in feed:
                pass
        finally:
            ended.append("cleaned")  # python-pkcs11's context manager ends the operation here

    d = StepDriver(cleanup)
    d.start()
    d.feed(b"x")
    d.abort()
    assert d.done and ended == ["cleaned"]
    d.abort()  # idempotent, never raises


def test_error_classes_transport_suspect_request() -> None:
    """Only a transport failure takes a member down by itself; CKR_GENERAL_ERROR is
    a suspect (a second member decides); request errors never count."""
    import pkcs11

    from hacli.engine.ckr import is_member_failure, is_suspect

    for transport in (pkcs11.DeviceError(), pkcs11.DeviceRemoved(), pkcs11.TokenNotPresent(),
                      pkcs11.SessionHandleInvalid(), TimeoutError(), ConnectionResetError()):
        assert is_member_failure(transport) and not is_suspect(transport)
    for suspect in (pkcs11.GeneralError(), pkcs11.DeviceMemory()):
        assert is_suspect(suspect) and not is_member_failure(suspect)
    for request in (pkcs11.MechanismInvalid(), pkcs11.KeyTypeInconsistent(),
                    pkcs11.DataLenRange(), pkcs11.PinIncorrect(), ValueError("bug")):
        assert not is_member_failure(request) and not is_suspect(request)


def test_no_values_in_error_details() -> None:
    from hacli.engine.exceptions import safe_detail as _safe_detail
    from hacli.engine.templates import checked as _checked

    msg = _safe_detail(TypeError("bad b'\\x01\\x02secret' value"))
    assert "secret" not in msg and "<bytes>" in msg
    # python-pkcs11 would crash encoding a template half-way: refused first
    with pytest.raises(CKRError) as exc:
        _checked({Attribute.VALUE: b"\x01secret", Attribute.LABEL: 5}, "C_CreateObject")
    assert exc.value.ckr == "CKR_ATTRIBUTE_VALUE_INVALID" and "CKA_LABEL" in str(exc.value)
    assert "secret" not in str(exc.value) and exc.value.__cause__ is None
    with pytest.raises(CKRError) as exc:
        _checked({0x7FFF_0000: b"x"}, "C_CreateObject")
    assert exc.value.ckr == "CKR_ATTRIBUTE_TYPE_INVALID"
    assert _checked(None, "C_FindObjectsInit") == {}


def test_member_state_machine_and_failure_news() -> None:
    """MemberSet alone (no lab): transitions, the policy told of each failure
    once, listeners told (member -> group -> sessions), the HA log written."""
    from hacli.engine.halog import NullLog
    from hacli.engine.member import Member, MemberState
    from hacli.engine.members import MemberSet

    class Log(NullLog):
        def __init__(self) -> None:
            self.lines: list[tuple[str, str, str | None]] = []

        def event(self, group: str, serial: str, event: str, ckr: str | None = None) -> None:
            self.lines.append((serial, event, ckr))

    clock = FakeClock()
    policy = RecoveryPolicy(max_attempts=-1, interval=5, clock=clock)
    a, b = Member("a", None, 1.0), Member("b", None, 1.0)
    log = Log()
    ms = MemberSet("g", [a, b], policy, log, clock)
    told: list[str] = []
    ms.on_failure(lambda m: told.append(m.serial))
    a.state = b.state = MemberState.ALIVE
    assert [m.serial for m in ms.serving()] == ["a", "b"]

    ms.mark_failed(a, px.DeviceError())
    ms.mark_failed(a, px.DeviceError())  # the same failure, seen twice: told once
    assert told == ["a"] and a.state is MemberState.DOWN and a.last_error == "CKR_DEVICE_ERROR"
    assert log.lines == [("a", "failed", "CKR_DEVICE_ERROR")]
    assert set(policy.disconnected) == {"a"} and ms.serving() == [b]

    ms.mark_recovering(a)
    assert a.state is MemberState.RECOVERING and not a.alive
    ms.mark_attempt_failed(a, px.TokenNotPresent())
    assert a.state is MemberState.DOWN and policy.state_of("a").attempts == 1
    assert log.lines[-1] == ("a", "recovery-failed", "CKR_TOKEN_NOT_PRESENT")

    class Inst:
        generation = 1

    ms.mark_recovering(a)
    ms.mark_connected(a, Inst(), object(), recovered=True)  # type: ignore[arg-type]
    assert a.state is MemberState.SYNCHRONISING and a.alive  # serves while catching up
    assert "a" not in policy.disconnected and a.recoveries == 1
    assert log.lines[-1] == ("a", "recovered", None)
    ms.mark_caught_up(a)
    assert a.state is MemberState.ALIVE
    # a failure during the catch-up puts it back into the policy with a fresh record
    ms.mark_failed(a, px.DeviceRemoved())
    assert policy.state_of("a").attempts == 0 and told == ["a", "a"]


def test_half_made_objects_are_recognised_by_their_missing_identity() -> None:
    """What a creation cut by a SIGKILL leaves on a SoftHSM2 token (no label, no
    ID; or not even a class, which reads as a data object) is half-made; any
    object carrying an identity is not, whatever its class."""
    from pkcs11 import Attribute, ObjectClass

    from hacli.engine.sync import half_made

    key = {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.TOKEN: True}
    assert half_made(key)
    assert half_made({**key, Attribute.LABEL: "", Attribute.ID: b""})
    assert not half_made({**key, Attribute.ID: b"\x01"})
    assert not half_made({**key, Attribute.LABEL: "k"})
    data = {Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True}
    assert half_made(data)
    assert not half_made({**data, Attribute.APPLICATION: "app"})
    assert not half_made({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.TOKEN: True})


class _LogLines:
    """An HA log that keeps (serial, event, ckr) in memory."""

    path = None

    def __init__(self) -> None:
        self.lines: list[tuple[str | None, str, str | None]] = []

    def event(self, group: str, serial: str | None, event: str, ckr: str | None = None) -> str:
        self.lines.append((serial, event, ckr))
        return event

    def seen_up(self, group: str, member: str) -> str:
        return ""


class _Inst:
    generation = 1


class _Conn:
    id = 1


def test_standby_roles_promote_the_longest_up_standby_and_demote_it() -> None:
    """MemberSet + StandbyRoles + Balancer, no lab: a standby is never picked
    while an active member serves (except for a session pinned to it); with
    no active member left the standby up longest serves every call, logged
    once; an active member back in service (still catching up) demotes it."""
    from hacli.engine.member import Member
    from hacli.engine.members import MemberSet

    clock = FakeClock()
    log = _LogLines()
    a, s1, s2 = Member("a", None, 1.0), Member("s1", None, 1.0), Member("s2", None, 1.0)
    ms = MemberSet("g", [a, s1, s2], RecoveryPolicy(-1, 5, clock), log, clock,
                   standby=("s1", "s2"))

    def connect(m: Member, recovered: bool = False) -> None:
        ms.mark_connected(m, _Inst(), _Conn(), recovered=recovered)  # type: ignore[arg-type]

    def picks(n: int = 6, only: Member | None = None) -> set[str]:
        got = set()
        for _ in range(n):
            m = ms.balancer.pick(frozenset(), only)
            assert m is not None
            ms.balancer.done(m, True, "C_GenerateRandom", 0.0)
            got.add(m.serial)
        return got

    connect(s2)  # a standby answering first at start-up promotes nobody
    clock.advance(1)
    connect(s1)
    connect(a)
    ms.start_roles()
    assert log.lines == []
    assert picks() == {"a"} and s1.ops == s2.ops == 0
    assert picks(2, only=s1) == {"s1"}  # a member slot's session still reaches it
    assert [ms.roles.role_of(m) for m in (a, s1, s2)] == ["active", "standby", "standby"]

    ms.mark_failed(a, px.DeviceError())
    assert log.lines == [("a", "failed", "CKR_DEVICE_ERROR"), ("s2", "standby-promoted", None)]
    assert picks() == {"s2"} and ms.roles.role_of(s2) == "promoted"
    ms.mark_failed(s2, px.DeviceError())  # the promoted one fails: the next standby
    assert log.lines[-1] == ("s1", "standby-promoted", None) and picks() == {"s1"}

    connect(a, recovered=True)  # back, still synchronising: it serves, s1 steps back
    assert log.lines[-2:] == [("a", "recovered", None), ("s1", "standby-demoted", None)]
    assert picks() == {"a"} and ms.roles.promoted is None
    assert [e for _, e, _ in log.lines].count("standby-promoted") == 2


def test_a_group_without_standby_balances_over_every_member_as_before() -> None:
    from hacli.engine.member import Member
    from hacli.engine.members import MemberSet

    clock = FakeClock()
    ms = MemberSet("g", [Member("a", None, 1.0), Member("b", None, 1.0)],
                   RecoveryPolicy(-1, 5, clock), _LogLines(), clock)
    assert ms.roles.candidates == ms.members and ms.roles.reserve == ()
    for m in ms.members:
        ms.mark_connected(m, _Inst(), _Conn(), recovered=False)  # type: ignore[arg-type]
    ms.start_roles()
    ms.mark_failed(ms.members[0], px.DeviceError())
    assert ms.roles.candidates == ms.members  # never recomputed


def test_gave_up_is_logged_once_when_the_attempts_run_out() -> None:
    """reconnAtt 2: the second failed attempt logs gave-up, once; an
    administrator's attempt (not counted) neither spends nor logs it."""
    from hacli.engine.member import Member
    from hacli.engine.members import MemberSet

    clock = FakeClock()
    log = _LogLines()
    policy = RecoveryPolicy(2, 5, clock)
    a = Member("a", None, 1.0)
    ms = MemberSet("g", [a], policy, log, clock)
    ms.mark_failed(a, px.DeviceError())
    ms.mark_attempt_failed(a, px.TokenNotPresent())
    assert [e for _, e, _ in log.lines] == ["failed", "recovery-failed"]
    ms.mark_attempt_failed(a, px.TokenNotPresent())
    assert log.lines[-1] == ("a", "gave-up", "CKR_TOKEN_NOT_PRESENT")
    assert policy.attempts_left("a") == 0
    ms.mark_attempt_failed(a, px.TokenNotPresent(), counted=False)
    assert log.lines[-1] == ("a", "recovery-failed", "CKR_TOKEN_NOT_PRESENT")
    assert [e for _, e, _ in log.lines].count("gave-up") == 1
    assert policy.state_of("a").attempts == 2
