"""HIGH AVAILABILITY RECOVERY FUNCTIONS: 50 HA Init, 51 HA Login, 52 HA Status."""

from __future__ import annotations

from hacli.cli.menu.actions.common import Ctx, action, choose_slot, with_pin


@action(50)
def ha_init(ctx: Ctx) -> None:
    already = ctx.state.initialised
    engine = ctx.state.init_engine()
    ctx.say(f"HA {'was already initialised' if already else 'initialised'} from "
            f"{ctx.state.conf_path}")
    for g in engine.groups:
        ctx.say(f"HA group {g.label} (serial {g.serial}), slot#{g.slot_id}:")
        for m in g.members:
            state = "connected" if m.alive else f"not connected ({m.last_error})"
            ctx.say(f"  HSM {m.serial} - {state}")


@action(51)
def ha_login(ctx: Ctx) -> None:
    slot = choose_slot(ctx, ha_only=True)
    group = ctx.engine().group(slot.group)
    with_pin(ctx, group.login)
    members = [m.serial for m in group.members if m.alive]
    ctx.say(f"Logged in to HA group {group.serial}: HSM {', HSM '.join(members)}")


@action(52)
def ha_status(ctx: Ctx) -> str:
    slot = choose_slot(ctx, ha_only=True)
    status = ctx.engine().group(slot.group).status(probe=True)
    ctx.say(f"HA group {status.serial} status:")
    for m in status.members:
        ctx.say(f"HSM {m.serial} - {m.status}")
    if ctx.state.verbose:
        for m in status.members:
            extra = "" if m.alive else f", down {m.down_for or 0:.1f} s ({m.last_error})"
            sync = ", needs synchronisation" if m.needs_sync else ""
            ctx.say(f"  {m.serial}: {m.ops} operations{extra}{sync}")
    return status.status
