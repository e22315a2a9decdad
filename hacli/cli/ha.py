"""``hacli ha status``: probe every member of every HA group.

A member that is down is reported ``CKR_DEVICE_ERROR`` the first time and
``CKR_TOKEN_NOT_PRESENT`` after that, as the origin document's CKDemo
transcript shows.  Each ``hacli`` run is a fresh process, so which failures
were already reported is remembered in a small state file
(``$XDG_STATE_HOME/hacli/reported-down.json``) per configuration file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.errors import ExitStatus

if TYPE_CHECKING:
    from hacli.engine import GroupStatus


def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hacli" / "reported-down.json"


def _load_reported() -> dict[str, list[str]]:
    try:
        data = json.loads(_state_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged memory only costs one extra CKR_DEVICE_ERROR


def _save_reported(data: dict[str, list[str]]) -> None:
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # status still prints; only the DEVICE_ERROR -> NOT_PRESENT memory is lost


def apply_memory(conf_key: str, groups: list[GroupStatus]) -> list[dict[str, Any]]:
    """Status dicts, with failures already reported by an earlier run downgraded
    from ``CKR_DEVICE_ERROR`` to ``CKR_TOKEN_NOT_PRESENT``."""
    from hacli.engine.ckr import CKR  # here: `hacli ha --help` loads no engine

    memory = _load_reported()
    reported = set(memory.get(conf_key, []))
    out = []
    for g in groups:
        members = []
        for m in g.members:
            status = m.status
            if m.alive:
                reported.discard(m.serial)
            elif status == CKR.DEVICE_ERROR and m.serial in reported:
                status = CKR.TOKEN_NOT_PRESENT
            else:
                reported.add(m.serial)
            members.append({"serial": m.serial, "status": status})
        out.append({"label": g.label, "serial": g.serial, "status": g.status,
                    "members": members})
    memory[conf_key] = sorted(reported)
    _save_reported(memory)
    return out


def exit_status(groups: list[dict[str, Any]]) -> ExitStatus:
    """0 all members serve, 3 a member is down, 4 a group has no member serving."""
    from hacli.engine.ckr import CKR

    if any(g["status"] != CKR.OK for g in groups):
        return ExitStatus.GROUP_DOWN
    if any(m["status"] != CKR.OK for g in groups for m in g["members"]):
        return ExitStatus.DEGRADED
    return ExitStatus.OK


@click.group()
def ha() -> None:
    """Live HA status of the configured groups."""


@ha.command()
@click.option("--group", "label", help="Only this group (label).")
@json_option
def status(label: str | None, as_json: bool) -> int:
    """Probe every member and print each group's and member's CKR status.

    No PIN is needed. Exit 0 all members serve, 3 degraded (a member is down,
    the group serves), 4 a group is down, 1 the check itself failed.
    """
    from hacli.engine import Engine

    ctx = app()
    config = ctx.config()
    if not config.groups:
        raise click.ClickException(f"no HA groups are configured in {ctx.path}")
    with Engine(config, groups=[label] if label else None) as engine:
        groups = apply_memory(str(ctx.path.resolve()), engine.status(probe=True))
    if as_json:
        render.emit_json({"groups": groups})
    else:
        from hacli.cli.members import member_problem

        for g in groups:
            rows = [[m["serial"], m["status"], member_problem(config, m["serial"]) or ""]
                    for m in g["members"]]
            headers = ["HSM", "Status", "Note"] if any(r[2] for r in rows) else ["HSM", "Status"]
            render.table(headers, [r[: len(headers)] for r in rows],
                         title=f"HA group {g['serial']} ({g['label']}) status:")
            render.echo(_group_line(g))
    return int(exit_status(groups))


def _group_line(g: dict[str, Any]) -> str:
    from hacli.engine.ckr import explain

    return f"Status: {explain(g['status'])} ({g['status']})"
