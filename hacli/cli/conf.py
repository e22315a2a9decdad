"""``hacli conf ...``: show, get, set and check configuration values."""

from __future__ import annotations

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.conf import haedit, spec
from hacli.errors import ExitStatus


@click.group()
def conf() -> None:
    """Show, get, set and check configuration values."""


@conf.command()
@json_option
def show(as_json: bool) -> None:
    """Show every HA setting: its value in the file or its default, and its meaning."""
    from hacli.conf.check import require_valid

    ctx = app()
    doc = ctx.load()
    require_valid(doc)
    rows = []
    for s in spec.settings():
        raw = doc.get(s.section, s.key)
        # "text" is the value as the file writes it (a flag is 0 or 1, never True);
        # "value" is typed, for scripts.
        text = raw.strip() if raw is not None else s.default_text
        rows.append({
            "section": s.section, "key": s.key, "value": spec.convert(s.section, s.key, text),
            "text": text, "source": "file" if raw is not None else "default", "help": s.help,
        })
    if as_json:
        render.emit_json({"file": str(ctx.path), "syntax": doc.syntax, "settings": rows})
        return
    render.echo(f"{ctx.path} ({'Unix brace' if doc.syntax == 'brace' else 'Windows INI'} syntax)")
    render.table(
        ["Section", "Key", "Value", "Source"],
        [[r["section"], r["key"], r["text"], r["source"]] for r in rows],
    )


@conf.command()
@click.argument("section")
@click.argument("key")
def get(section: str, key: str) -> int:
    """Print the value of KEY in SECTION (exit 1 when it is not set)."""
    doc = app().load()
    value = doc.get(section, key) if doc.has_section(section) else None
    if value is None:
        setting = spec.lookup(section, key)
        default = f" (default: {setting.default})" if setting else ""
        click.echo(f"Error: [{section}] {key} is not set{default}", err=True)
        return int(ExitStatus.FAILED)
    render.echo(value)
    return 0


@conf.command("set")
@click.argument("section")
@click.argument("key")
@click.argument("value")
@click.option("--force", is_flag=True,
              help="Write an unknown HA key, or a value Luna clients refuse, anyway.")
def set_cmd(section: str, key: str, value: str, force: bool) -> None:
    """Set KEY in SECTION to VALUE (Luna configurator's setValue).

    The file as it would be written is checked the way `conf check` and
    every reader check a file: a value that would make it unreadable is
    refused (exit 2, nothing written); an unknown or misspelt HA key (with
    the spelling it may mean) or an interval outside Luna's range needs
    --force.  A file that already has problems can be mended with it: only
    new problems are refused.  The section is created when it is missing.
    """
    ctx = app()
    with ctx.edit(force=force, repair=True) as doc:
        haedit.set_setting(doc, section, key, value)
    render.echo(f"[{section}] {key} = {value}")
    render.echo(f"Wrote {ctx.path}")


@conf.command("check")
@json_option
def check_cmd(as_json: bool) -> int:
    """Validate the HA sections: unknown keys, bad values, repeated members.

    Exit 0 when nothing is wrong (warnings allowed), 1 when an error is found.
    """
    from hacli.conf.check import check

    ctx = app()
    findings = check(ctx.load())
    errors = sum(f.severity == "error" for f in findings)
    if as_json:
        render.emit_json({"file": str(ctx.path), "errors": errors,
                          "findings": [f.as_dict() for f in findings]})
    elif not findings:
        render.echo(f"{ctx.path}: no problems found")
    else:
        for f in findings:
            where = f"{ctx.path}:{f.line}" if f.line else str(ctx.path)
            render.echo(f"{where}: {f.severity}: {f.message}")
        warnings = len(findings) - errors
        render.echo(f"{errors} error(s), {warnings} warning(s)")
    return int(ExitStatus.FAILED) if errors else 0
