"""``hacli ha status``: probe every member of every HA group.

A member that is down is reported ``CKR_DEVICE_ERROR`` the first time and
``CKR_TOKEN_NOT_PRESENT`` after that, as the origin document's CKDemo
transcript shows.  Each ``hacli`` run is a fresh process, so which failures
were already reported, and since when each member is down, is remembered in
a small state file (``$XDG_STATE_HOME/hacli/reported-down.json``) per
configuration file.

Each group ends with a summary line: ``Doing great, no errors`` while every
member serves, ``degraded: 1 of 2 members down``, or ``group down: 2 of 2
members down``; the group's CKR code follows it.  A member hacli cannot reach
at all (no module configured for it, or its module file is missing) is a
configuration error: the status is printed, then one ``Error:`` line, exit 1.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.errors import ConfError, ExitStatus

if TYPE_CHECKING:
    from hacli.conf.model_types import HAConfig
    from hacli.engine import GroupStatus, MemberStatus

#: conf file -> member serial -> when a status run first saw it down (epoch s)
Memory = dict[str, dict[str, float]]


def _state_file() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "hacli" / "reported-down.json"


def _load_reported() -> Memory:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return {}  # a missing or damaged memory only costs one extra CKR_DEVICE_ERROR
    if not isinstance(data, dict):
        return {}
    out: Memory = {}
    for conf, seen in data.items():
        if isinstance(seen, list):  # written by an earlier hacli: serials only
            out[conf] = {str(s): 0.0 for s in seen}
        elif isinstance(seen, dict):
            out[conf] = {str(s): float(t) for s, t in seen.items()
                         if isinstance(t, int | float)}
    return out


def _save_reported(data: Memory) -> None:
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # status still prints; only the DEVICE_ERROR -> NOT_PRESENT memory is lost


def _when(epoch: float | None) -> str | None:
    """An ISO-8601 local time with its offset, as the HA log writes them."""
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _reason(config: HAConfig, m: MemberStatus) -> str:
    """Why the member is in its state, in words."""
    from hacli.cli.members import member_problem
    from hacli.engine.ckr import explain

    problem = member_problem(config, m.serial)
    if problem is not None:
        return problem
    if m.alive:
        return "in service"
    if m.last_error:
        return f"{m.last_error}: {explain(m.last_error)}"
    return "down"


def _member(config: HAConfig, m: MemberStatus, status: str, first_seen: float | None
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"serial": m.serial, "status": status, "reason": _reason(config, m)}
    r = m.recovery
    if not m.alive and r is not None:
        # the engine of this run saw the member down only just now: an earlier
        # run may have seen it before (the memory)
        since = r.down_since if first_seen is None else min(first_seen, r.down_since)
        out.update(down_since=_when(since), attempts_used=r.attempts_used,
                   attempts_left=r.attempts_left, next_attempt=_when(r.next_attempt))
    return out


def apply_memory(conf_key: str, config: HAConfig, groups: list[GroupStatus]
                 ) -> list[dict[str, Any]]:
    """Status dicts, with failures already reported by an earlier run downgraded
    from ``CKR_DEVICE_ERROR`` to ``CKR_TOKEN_NOT_PRESENT``, each member's
    reason, and for a member that is down where it stands in recovery."""
    from hacli.engine.ckr import CKR  # here: `hacli ha --help` loads no engine

    memory = _load_reported()
    reported = memory.get(conf_key, {})
    out = []
    for g in groups:
        members = []
        for m in g.members:
            status = m.status
            first_seen = reported.get(m.serial) or None
            if m.alive:
                reported.pop(m.serial, None)
            else:
                if status == CKR.DEVICE_ERROR and m.serial in reported:
                    status = CKR.TOKEN_NOT_PRESENT
                if first_seen is None:
                    seen_now = m.recovery.down_since if m.recovery else None
                    reported[m.serial] = seen_now or 0.0
            members.append(_member(config, m, status, first_seen))
        out.append({"label": g.label, "serial": g.serial, "status": g.status,
                    "members": members})
    memory[conf_key] = reported
    _save_reported(memory)
    return out


def _down(g: dict[str, Any]) -> int:
    from hacli.engine.ckr import CKR

    return sum(m["status"] != CKR.OK for m in g["members"])


def exit_status(groups: list[dict[str, Any]]) -> ExitStatus:
    """0 all members serve, 3 a member is down, 4 a group has no member serving."""
    from hacli.engine.ckr import CKR

    if any(g["status"] != CKR.OK for g in groups):
        return ExitStatus.GROUP_DOWN
    if any(_down(g) for g in groups):
        return ExitStatus.DEGRADED
    return ExitStatus.OK


def summary_line(g: dict[str, Any]) -> str:
    """``Status: degraded: 1 of 2 members down (CKR_OK)``: the group in one line."""
    from hacli.engine.ckr import CKR, explain

    down, total = _down(g), len(g["members"])
    if g["status"] != CKR.OK:
        text = f"group down: {down} of {total} members down"
    elif down:
        text = f"degraded: {down} of {total} members down"
    else:
        text = explain(g["status"])
    return f"Status: {text} ({g['status']})"


def _unreachable(config: HAConfig, groups: list[dict[str, Any]]) -> str | None:
    """The configuration error that keeps hacli from some members, or None."""
    from hacli.cli.members import member_problem

    problems = [f"{m['serial']}: {problem}" for g in groups for m in g["members"]
                if (problem := member_problem(config, m["serial"])) is not None]
    if not problems:
        return None
    return (f"cannot reach {len(problems)} member(s), a configuration error in "
            f"{config.path or 'the configuration'}: " + "; ".join(problems))


def print_table(config: HAConfig, groups: list[dict[str, Any]]) -> None:
    """The status as a table per group, each with its summary line."""
    from hacli.cli.members import member_problem

    for g in groups:
        rows = [[m["serial"], m["status"], member_problem(config, m["serial"]) or ""]
                for m in g["members"]]
        headers = ["HSM", "Status", "Note"] if any(r[2] for r in rows) else ["HSM", "Status"]
        render.table(headers, [r[: len(headers)] for r in rows],
                     title=f"HA group {g['serial']} ({g['label']}) status:")
        render.echo(summary_line(g))


@click.group()
def ha() -> None:
    """Live HA status of the configured groups."""


@ha.command()
@click.option("--group", "label", help="Only this group (label).")
@json_option
@click.option("--watch", is_flag=True,
              help="Keep watching: a live view on a terminal, else one line per member "
                   "state change (JSON lines with --json). Ctrl-C ends it (exit 130).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True,
              metavar="S", help="With --watch: seconds between refreshes.")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), metavar="PATH",
              help="With --watch: watch a running `hacli serve` through its status "
                   "socket PATH.status (the serve's --socket PATH works too).")
@click.option("--prometheus", is_flag=True,
              help="Print the Prometheus text format (for node-exporter's textfile "
                   "collector) instead of the table.")
def status(label: str | None, as_json: bool, watch: bool, interval: float,
           socket_path: str | None, prometheus: bool) -> int:
    """Probe every member and print each group's and member's CKR status.

    No PIN is needed. Exit 0 all members serve, 3 degraded (a member is down,
    the group serves), 4 a group is down, 1 the check itself failed or a
    member cannot be reached because of the configuration (its module).
    --watch runs until Ctrl-C (exit 130).
    """
    from hacli.errors import UsageError

    given = click.get_current_context().get_parameter_source
    if not watch and (socket_path is not None
                      or given("interval") is not click.core.ParameterSource.DEFAULT):
        raise UsageError("--interval and --socket go with --watch")
    if prometheus and (watch or as_json):
        raise UsageError("--prometheus prints one exposition: not with --watch or --json")
    if socket_path is not None:
        if label is not None:
            raise UsageError("--group: with --socket the serve decides what is watched")
        from hacli.cli.watch import watch as run_watch
        from hacli.metrics.watch import SocketFeed
        from hacli.serve.status import status_path

        # the serve's own --socket PATH will do too: its status socket is beside it
        beside = status_path(Path(socket_path))
        run_watch(SocketFeed(beside if beside.exists() else socket_path), interval, as_json)
        return int(ExitStatus.OK)
    from hacli.engine import Engine

    ctx = app()
    config = ctx.config()
    if not config.groups:
        raise click.ClickException(f"no HA groups are configured in {ctx.path}")
    with Engine(config, groups=[label] if label else None) as engine:
        if watch:
            from hacli.cli.watch import watch as run_watch
            from hacli.metrics.watch import EngineFeed

            run_watch(EngineFeed(engine), interval, as_json)
            return int(ExitStatus.OK)
        groups = apply_memory(str(ctx.path.resolve()), config, engine.status(probe=True))
        exposed = engine.metrics() if prometheus else None
    if exposed is not None:
        from hacli.metrics.prometheus import exposition

        click.echo(exposition(lambda: exposed).decode(), nl=False)
    elif as_json:
        render.emit_json({"groups": groups})
    else:
        print_table(config, groups)
    problem = _unreachable(config, groups)
    if problem is not None:
        raise ConfError(problem)
    return int(exit_status(groups))
