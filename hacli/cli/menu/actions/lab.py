"""LAB FUNCTIONS (lab groups only): crash, freeze and restore members from the menu,
so the origin document's whole scenario runs in one session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacli.cli.menu.actions.common import Ctx, MenuError, action
from hacli.engine.ckr import CKR
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.engine import HAGroup
    from hacli.lab import Lab, MemberStatus


def _lab(ctx: Ctx) -> Lab:
    lab = ctx.state.lab
    if lab is None:
        raise MenuError("The configured group is not a lab group.", CKR.FUNCTION_NOT_SUPPORTED)
    return lab


def _member_line(i: int, m: MemberStatus) -> str:
    pid = f", pid {m.pid}" if m.pid else ""
    return f"member#{i} - {m.label} ({m.serial}) {m.state}{pid}"


def choose_member(ctx: Ctx) -> tuple[Lab, MemberStatus]:
    lab = _lab(ctx)
    members = lab.status().members
    ctx.say("Lab members:")
    for i, m in enumerate(members, 1):
        ctx.say(_member_line(i, m))
    index = ctx.io.ask_int("Select a member", 1, len(members))
    return lab, members[index - 1]


def _change(ctx: Ctx, verb: str) -> str:
    """Fail, hang or restore a member; the serial of the member."""
    lab, member = choose_member(ctx)
    result = getattr(lab, verb)(member.serial)
    ctx.say(f"{result.label} ({result.serial}) is {result.state}.")
    return str(result.serial)


def comeback(group: HAGroup, serial: str) -> str | None:
    """What the HA group will do about a member that is down, in words; None
    when it is in service (nothing to say)."""
    if group.members_set.get(serial).alive:
        return None
    policy = group.policy
    due = policy.next_attempt(serial)
    if due is not None:
        left = policy.attempts_left(serial)
        tries = "" if left is None else f"; {left} attempt(s) left"
        return (f"The HA group takes it back at its next recovery attempt, in "
                f"{max(0.0, due - group.clock()):.0f} s (AutoReconnectInterval "
                f"{policy.interval:.0f} s after the failure or the last attempt{tries}).")
    if policy.max_attempts == 0:
        return ("Automatic recovery is off (reconnAtt 0): the HA group does not take it "
                "back by itself.")
    return (f"The HA group used up its {policy.max_attempts} recovery attempt(s) on it "
            f"(reconnAtt {policy.max_attempts}): it does not take it back by itself.")


@action(120)
def fail_member(ctx: Ctx) -> None:
    _change(ctx, "fail")


@action(121)
def hang_member(ctx: Ctx) -> None:
    _change(ctx, "hang")


@action(122)
def restore_member(ctx: Ctx) -> str | None:
    serial = _change(ctx, "restore")
    if not ctx.state.initialised:
        return None  # no HA group is running in this menu yet: it connects on 50
    try:
        group = ctx.engine().group_of(serial)
    except UsageError:
        return None  # the lab's member is not in the configured groups
    outlook = comeback(group, serial)
    if outlook is None:
        # in service, or its failure not met yet (a call that meets it fails
        # over and marks it down; its recovery follows as for any failure)
        ctx.say(f"HA group {group.label} has not marked it down.")
        return None
    ctx.say(outlook)
    if group.policy.next_attempt(serial) is not None:
        return None
    # the group will not try again by itself: offer the administrator's recovery
    # (the same use case as `hacli hagroup recover`)
    if not ctx.io.ask_yes_no("Recover it into the HA group now"):
        return None
    failed: str | None = None
    for r in group.recover(serial):
        ctx.say(f"HSM {r.serial} - {r.describe()}")
        if not r.ok:
            failed = r.ckr or CKR.DEVICE_ERROR
    return failed


@action(123)
def lab_status(ctx: Ctx) -> None:
    status = _lab(ctx).status()
    ctx.say(f"Lab {status.dir}, HA group {status.group}:")
    for i, m in enumerate(status.members, 1):
        ctx.say(_member_line(i, m))
