"""``hacli lab ...``: member HSMs as processes, to crash, freeze and restore."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from hacli.lab import Lab, LabStatus, MemberStatus


def dir_option(f):
    """``--dir DIR``: the lab directory (default: the XDG data directory + hacli/lab)."""
    return click.option(
        "--dir", "directory", metavar="DIR", type=click.Path(file_okay=False),
        help="Lab directory (default: the lab that wrote --conf's file, else "
             "$XDG_DATA_HOME/hacli/lab).",
    )(f)


def open_lab(directory: str | None) -> Lab:
    """The lab in ``directory``; else, with ``--conf``, the lab that wrote that
    file (its ``LabDir``); else the lab in the default place."""
    from hacli.conf.store import default_lab_dir
    from hacli.lab import Lab

    if directory:
        return Lab(Path(directory))
    ctx = app()
    if ctx.conf_option is not None:
        lab_dir = ctx.config().lab_dir
        if not lab_dir:
            raise UsageError(f"--conf {ctx.path}: no lab wrote this file (it has no LabDir "
                             "in its hacli section); give the lab with --dir")
        return Lab(Path(lab_dir))
    return Lab(default_lab_dir())


def _status_rows(status: LabStatus) -> list[list[object]]:
    return [[m.label, m.serial, m.state, m.pid or "-"] for m in status.members]


def show_status(status: LabStatus, as_json: bool, headline: str | None = None) -> None:
    """Render a lab status (the brief's JSON contract, or a table)."""
    if as_json:
        # stdout is one JSON document: what up changed goes to stderr
        for note in status.notes:
            click.echo(f"Updated: {note}", err=True)
        render.emit_json(status.as_dict())
        return
    if headline:
        render.echo(headline)
    for note in status.notes:
        render.echo(f"Updated: {note}")
    render.table(["Member", "Serial", "State", "PID"], _status_rows(status),
                 title=f"Lab {status.dir} — HA group {status.group} ({status.group_serial})")
    render.echo(f"Configuration: {status.conf}")
    # each member's token is in its own token directory: one SOFTHSM2_CONF each
    for i, m in enumerate(status.members):
        head = "Token access:" if i == 0 else ""
        render.echo(f"{head:<15}{m.label}: SOFTHSM2_CONF={m.softhsm2_conf}")
    render.echo(f"{'':<15}(PIN in {status.pin_file})")
    render.echo(f"p11-kit:       {status.p11kit_version}, client {status.p11kit_client}")


@click.group()
def lab() -> None:
    """Member HSMs as processes (SoftHSM2 behind p11-kit server)."""


@lab.command()
@click.option("--members", type=click.IntRange(1, 8), default=None,
              help="Number of members of a new lab (default 2).")
@dir_option
@json_option
def up(members: int | None, directory: str | None, as_json: bool) -> None:
    """Create the lab (or start what is down) and its HA group."""
    the_lab = open_lab(directory)
    status = the_lab.up(members)
    if status.created or status.notes:
        # the group's transport key: made with a new lab; an older lab brought
        # up to date replicates through it from now on (idempotent)
        from hacli.lab.provision import provision_lab

        provision_lab(the_lab)
    if status.created:
        headline = f"Lab created with {len(status.members)} members."
    elif status.started:
        headline = f"Lab started again: {', '.join(status.started)}."
    elif status.notes:
        headline = "Lab is up; brought up to date:"
    else:
        headline = "Lab is already up; nothing changed."
    show_status(status, as_json, headline)


@lab.command()
@click.option("--purge", is_flag=True, help="Also remove the lab's tokens and files.")
@dir_option
def down(purge: bool, directory: str | None) -> None:
    """Stop every lab process (tokens are kept unless --purge)."""
    the_lab = open_lab(directory)
    kept = the_lab.down(purge=purge)
    where = the_lab.directory
    if not purge:
        render.echo(f"Lab in {where} is down.")
    elif kept:
        render.echo(f"Lab in {where} is down and its files are removed; {where} itself is "
                    f"kept for what the lab did not make: {', '.join(kept)}.")
    else:
        render.echo(f"Lab in {where} is down and removed.")


@lab.command()
@dir_option
@json_option
def status(directory: str | None, as_json: bool) -> int:
    """Show the lab's members and their processes.

    Exit status 0 when every member runs, 3 when one is failed, hung or
    stopped, 1 when there is no lab.
    """
    result = open_lab(directory).status()
    show_status(result, as_json)
    return int(ExitStatus.DEGRADED) if result.not_running else int(ExitStatus.OK)


def _member_command(verb: str, doc: str):
    @click.argument("member")
    @dir_option
    @json_option
    def command(member: str, directory: str | None, as_json: bool) -> None:
        result: MemberStatus = getattr(open_lab(directory), verb)(member)
        if as_json:
            render.emit_json(result.as_dict())
        else:
            pid = f" (pid {result.pid})" if result.pid else ""
            render.echo(f"{result.label} ({result.serial}) is {result.state}{pid}.")

    command.__doc__ = doc
    return lab.command(verb)(command)


fail = _member_command("fail", "Crash a member: SIGKILL its process group (serial or label).")
hang = _member_command("hang", "Freeze a member: SIGSTOP its process group (calls into it block).")
restore = _member_command("restore", "Bring a member back: SIGCONT, or restart its server.")
