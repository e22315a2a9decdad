"""What hagroup commands do with live members: probe them, set up the transport key.

Kept out of :mod:`hacli.cli.hagroup` so that the configuration-only commands
never import the engine (and python-pkcs11).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hacli.cli import render

if TYPE_CHECKING:
    from hacli.conf.model_types import GroupConf, HAConfig


def reachable(config: HAConfig, group: GroupConf) -> bool:
    """True when hacli can load every member's module."""
    return all(member_problem(config, s) is None for s in group.members)


def member_problem(config: HAConfig, serial: str) -> str | None:
    """Why hacli cannot reach a member at all, in words, or None."""
    import os

    loc = config.location(serial)
    if loc is None:
        return "no PKCS#11 module for it in [hacli] (MemberNN* or DefaultLibrary)"
    if not os.path.exists(loc.library):
        return f"module {loc.library} not found"
    return None


def live_members(config: HAConfig, pin: str | None = None) -> dict[str, dict[str, Any]]:
    """serial -> {"status": alive|down, "label": token label, "needs_sync": bool|None}.

    Members without a module location are absent (hacli cannot reach them).
    Probing is bounded by the command timeout (``ReceiveTimeout``) per member.
    With a PIN, each group's token objects are compared across members (as
    lunacm's listgroups does after asking for the password): ``needs_sync``.
    """
    from hacli.engine import Engine

    groups = [g.label for g in config.groups if reachable(config, g)]
    if not groups:
        return {}
    out: dict[str, dict[str, Any]] = {}
    with Engine(config, groups=groups) as engine:
        statuses = {m.serial: m for g in engine.status(probe=True) for m in g.members}
        for slot in engine.slots():
            if slot.kind != "member":
                continue
            m = statuses[slot.token_serial]
            label = ""
            if m.alive:
                try:
                    label = engine.token_info(slot.slot_id).label
                except Exception:  # a member that died between probe and info
                    label = ""
            out[slot.token_serial] = {"status": "alive" if m.alive else "down",
                                      "label": label.strip(), "needs_sync": None}
        if pin is not None:
            for g in engine.groups:
                for inv in g.inventory_diff(pin).members:
                    if inv.reachable:
                        out[inv.serial]["needs_sync"] = inv.needs_sync
    return out


def setup_transport_key(config: HAConfig, group: GroupConf, so_pin_file: str | None,
                        lab_dir: str | None) -> dict[str, str]:
    """Give every member of ``group`` the group's transport key (SO PIN needed).

    Returns serial -> outcome (present, created, copied, unreachable: CKR_...).
    """
    from hacli.cli.pin import resolve_pin
    from hacli.engine import provision_transport_key

    problems = {s: member_problem(config, s) for s in group.members}
    if any(problems.values()):
        by_reason: dict[str, list[str]] = {}
        for serial, problem in problems.items():
            if problem:
                by_reason.setdefault(problem, []).append(serial)
        reasons = "; ".join(f"{p} ({', '.join(s)})" for p, s in by_reason.items())
        render.warn(f"transport key not set up: {reasons}")
        return {}
    so_pin = resolve_pin(so_pin_file, lab_dir, so=True)
    result = provision_transport_key(config, group.label, so_pin)
    for serial, outcome in result.items():
        if outcome not in ("present", "created", "copied"):
            render.warn(f"transport key on {serial}: {outcome}")
    return result


def log_event(config: HAConfig, group: str, serial: str, event: str) -> None:
    """Write a configuration event (added, removed) to the HA log when it is enabled."""
    from hacli.engine.halog import open_log

    open_log(config.settings).event(group, serial, event)
