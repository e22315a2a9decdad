"""``hacli multitoken``: load an HA slot (or one member directly), after Luna's tool."""

from __future__ import annotations

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.cli.pin import pin_file_option, resolve_pin
from hacli.conf.model import load_config
from hacli.conf.model_types import HACLI_SECTION

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
               pin_file: str | None, as_json: bool) -> None:
    """Run N threads of one operation for S seconds and report ops/s, errors, latency.

    Every answer is checked: signatures against a verified reference (ECDSA: a
    verified sample), ciphertexts against a round-tripped reference.
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
    pin = resolve_pin(pin_file, doc.get(HACLI_SECTION, "LabDir"))
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
        try:
            result = run(target, mode, threads, seconds)
        finally:
            target.close()
    if as_json:
        render.emit_json(result.as_dict())
        return
    d = result.as_dict()
    render.fields([
        ("mode", mode), ("slot", "HA virtual slot" if slot == "ha" else f"member {slot}"),
        ("threads", threads), ("seconds", f"{result.seconds:.2f}"),
        ("operations", result.ops), ("ops/s", f"{result.ops_per_s:,.1f}"),
        ("errors", result.errors if not result.error_kinds else
         f"{result.errors} ({', '.join(f'{k}: {v}' for k, v in result.error_kinds.items())})"),
        ("latency p50", f"{d['p50_ms']:.2f} ms"), ("latency p99", f"{d['p99_ms']:.2f} ms"),
    ])
    render.table(["Member", "Calls"], [[s, n] for s, n in result.per_member.items()])
    for note in result.notes:
        render.echo(f"({note})")
