"""LAB FUNCTIONS (lab groups only): crash, freeze and restore members from the menu,
so the origin document's whole scenario runs in one session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hacli.cli.menu.actions.common import Ctx, MenuError, action
from hacli.engine.ckr import CKR

if TYPE_CHECKING:
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


def _change(ctx: Ctx, verb: str) -> None:
    lab, member = choose_member(ctx)
    result = getattr(lab, verb)(member.serial)
    ctx.say(f"{result.label} ({result.serial}) is {result.state}.")
    if verb == "restore" and ctx.state.initialised:
        interval = ctx.engine().settings.auto_reconnect_interval
        ctx.say(f"The HA group takes it back at its next recovery attempt "
                f"(AutoReconnectInterval {interval} s after the failure).")


@action(120)
def fail_member(ctx: Ctx) -> None:
    _change(ctx, "fail")


@action(121)
def hang_member(ctx: Ctx) -> None:
    _change(ctx, "hang")


@action(122)
def restore_member(ctx: Ctx) -> None:
    _change(ctx, "restore")


@action(123)
def lab_status(ctx: Ctx) -> None:
    status = _lab(ctx).status()
    ctx.say(f"Lab {status.dir}, HA group {status.group}:")
    for i, m in enumerate(status.members, 1):
        ctx.say(_member_line(i, m))
