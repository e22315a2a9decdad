"""``hacli multitoken``: load an HA slot (or one member directly), after Luna's tool."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.cli.pin import pin_file_option, resolve_pin
from hacli.conf.model import load_config
from hacli.errors import ExitStatus, HacliError

if TYPE_CHECKING:
    from hacli.multitoken import Result

MODE_NAMES = ("rsasign", "ecsign", "aesenc", "random")


@click.command()
@click.option("--mode", type=click.Choice(MODE_NAMES), default="rsasign", show_default=True,
              help="RSA-2048 sign, EC P-256 sign, AES-256-CBC on 4 KiB, 256-byte random.")
@click.option("--slot", default="ha", show_default=True, metavar="ha|SERIAL",
              help="ha = the group's virtual slot; a member serial = that member directly.")
@click.option("--group", "label", help="HA group label (default: the only one).")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--seconds", type=click.FloatRange(0.1, 86400), default=5.0, show_default=True)
@pin_file_option
@json_option
def multitoken(mode: str, slot: str, label: str | None, threads: int, seconds: float,
               pin_file: str | None, as_json: bool) -> int:
    """Run N threads of one operation for S seconds and report ops/s, errors, latency.

    Every answer is checked: signatures against a verified reference (ECDSA: a
    verified sample), ciphertexts against a round-tripped reference.  The test
    key of the HA slot is on every member in service (made through the group).
    Exit 0 when every call succeeded, 1 when any failed or gave a wrong answer,
    130 on Ctrl-C (the results so far are printed first).
    \b
    Example: hacli multitoken --mode rsasign --slot ha --threads 4 --seconds 5
    """
    from hacli.engine import Engine
    from hacli.multitoken import run
    from hacli.multitoken.targets import DirectTarget, HATarget

    ctx = app()
    doc = ctx.load()
    config = load_config(doc, str(ctx.path))
    if not config.groups:
        raise click.ClickException(f"no HA groups are configured in {ctx.path}")
    pin = resolve_pin(pin_file, config.lab_dir)
    with Engine(config, groups=[label] if label else None) as engine:
        group = engine.group(label)
        target: HATarget | DirectTarget
        if slot.lower() == "ha":
            target = HATarget(engine, group.label, pin)
        else:
            if slot not in [m.serial for m in group.members]:
                members = ", ".join(m.serial for m in group.members)
                raise click.BadParameter(f"{slot!r} is not a member of {group.label} "
                                         f"(members: {members})", param_hint="--slot")
            target = DirectTarget(engine, slot, pin)
        where = "the HA virtual slot" if slot.lower() == "ha" else f"member {slot}"
        try:
            result = run(target, mode, threads, seconds, on_start=lambda: _started(
                f"Running {mode} on {where}, {threads} thread(s) for {seconds:g} s; "
                "Ctrl-C stops early and prints the results so far."))
        finally:
            target.close()
    show(result, as_json)
    if result.interrupted:
        return int(ExitStatus.INTERRUPTED)
    if result.errors:
        # a load figure with failures in it is no figure: scripts must notice
        raise HacliError(f"{result.errors:,} of {result.ops + result.errors:,} calls failed "
                         f"or gave a wrong answer ({_kinds(result)})")
    return int(ExitStatus.OK)


def _started(line: str) -> None:
    # a person at a terminal learns the load runs (and how to stop it); a
    # script's output stays the results alone
    if sys.stderr.isatty():
        click.echo(line, err=True)


def _kinds(result: Result) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in result.error_kinds.items())


def show(result: Result, as_json: bool) -> None:
    """Print a run's figures (the ``--json`` contract, or fields and a table)."""
    if as_json:
        render.emit_json(result.as_dict())
        return
    d = result.as_dict()
    render.fields([
        ("mode", result.mode),
        ("slot", "HA virtual slot" if result.slot == "ha" else f"member {result.slot}"),
        ("threads", result.threads), ("seconds", f"{result.seconds:.2f}"),
        ("operations", result.ops), ("ops/s", f"{result.ops_per_s:,.1f}"),
        ("errors", f"{result.errors} ({_kinds(result)})" if result.error_kinds
         else result.errors),
        ("latency p50", f"{d['p50_ms']:.2f} ms"), ("latency p99", f"{d['p99_ms']:.2f} ms"),
    ])
    render.table(["Member", "Calls"], [[s, n] for s, n in result.per_member.items()])
    for note in result.notes:
        render.echo(f"({note})")
    if result.interrupted:
        render.echo(f"(interrupted by Ctrl-C after {result.seconds:.2f} s: the figures "
                    "cover that time; the checks after the run were skipped)")
