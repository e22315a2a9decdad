"""``hacli hagroup ...``: lunacm's hagroup commands over the configuration file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from hacli.cli import render
from hacli.cli.context import app, json_option
from hacli.cli.pin import find_pin, pin_file_option, so_pin_file_option
from hacli.conf import haedit
from hacli.conf.model import HACONF, VT, load_config
from hacli.conf.model_types import (
    HACLI_SECTION,
    RECOVERY_MODES,
    GroupConf,
    HASettings,
    number_slots,
)
from hacli.errors import ExitStatus, UsageError

if TYPE_CHECKING:
    from hacli.conf.document import Document


def settings_dict(s: HASettings) -> dict[str, Any]:
    """The global HA settings as JSON-ready data."""
    return {
        "auto_recovery": s.reconn_att != 0,
        "recovery_mode": s.recovery_mode,
        "retry_count": s.reconn_att,
        "interval": s.auto_reconnect_interval,
        "ha_log": s.ha_log_enabled,
        "ha_log_path": s.ha_log_path,
        "log_len": s.log_len,
        "ha_only": s.ha_only,
    }


def recovery_line(s: HASettings) -> str:
    """E.g. ``HA auto recovery: enabled, retry forever, every 60 s``."""
    if s.reconn_att == 0:
        return "HA auto recovery: disabled (retry count 0)"
    tries = "retry forever" if s.reconn_att < 0 else f"at most {s.reconn_att} attempts"
    return f"HA auto recovery: enabled, {tries}, every {s.auto_reconnect_interval} s"


def _report(path: object, as_json: bool, changed: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        render.emit_json({"file": str(path), **changed})
    else:
        for line in lines:
            render.echo(line)
        render.echo(f"Wrote {path}")


def _write_retry(interval: int | None, count: str | None, force: bool, as_json: bool) -> None:
    # The interval's Luna range and its --force rule are the write check's (conf set's too).
    ctx = app()
    with ctx.edit(force=force) as doc:
        haedit.set_retry(doc, interval, count)
    s = _settings(doc)
    _report(ctx.path, as_json, {"settings": settings_dict(s)}, [recovery_line(s)])


def _settings(doc: Document | None = None) -> HASettings:
    """The validated settings of the edited document, or of the file."""
    ctx = app()
    return (ctx.config() if doc is None else load_config(doc, str(ctx.path))).settings


@click.group()
def hagroup() -> None:
    """HA group settings, as lunacm's hagroup commands."""


@hagroup.command()
@click.option("--interval", type=int, metavar="SECONDS",
              help="Seconds between recovery attempts (60..1200).")
@click.option("--count", metavar="N",
              help="Recovery attempts: -1/unlimited = forever, 0 = off, 1..500.")
@click.option("--force", is_flag=True, help="Write an interval outside 60..1200 anyway.")
@json_option
def retry(interval: int | None, count: str | None, force: bool, as_json: bool) -> None:
    """Set the auto-recovery interval and/or retry count (HAConfiguration).

    \b
    Example: hacli hagroup retry --interval 60 --count 0
    """
    if interval is None and count is None:
        raise click.UsageError("give --interval and/or --count")
    _write_retry(interval, count, force, as_json)


@hagroup.command("interval")
@click.option("--interval", "seconds", type=int, required=True, metavar="SECONDS",
              help="Seconds between recovery attempts (60..1200).")
@click.option("--force", is_flag=True, help="Write a value outside 60..1200 anyway.")
@json_option
def interval_cmd(seconds: int, force: bool, as_json: bool) -> None:
    """Set the auto-recovery interval (lunacm's separate spelling)."""
    _write_retry(seconds, None, force, as_json)


def _one_of(**flags: bool) -> str:
    chosen = [name for name, on in flags.items() if on]
    if len(chosen) != 1:
        names = " | ".join(f"--{n}" for n in flags)
        raise click.UsageError(f"give exactly one of {names}")
    return chosen[0]


@hagroup.command()
@click.option("--enable", is_flag=True, help="Show only the HA virtual slots.")
@click.option("--disable", is_flag=True, help="Show member slots too.")
@click.option("--show", is_flag=True, help="Show the current setting.")
@json_option
def haonly(enable: bool, disable: bool, show: bool, as_json: bool) -> None:
    """Hide (or show) member slots: HAOnly."""
    action = _one_of(enable=enable, disable=disable, show=show)
    ctx = app()
    if action == "show":
        s = _settings()
    else:
        with ctx.edit() as doc:
            haedit.set_setting(doc, HACONF, "HAOnly", "1" if action == "enable" else "0")
        s = _settings(doc)
    line = f"HA only mode: {'enabled' if s.ha_only else 'disabled'}"
    if action == "show":
        _show(as_json, {"ha_only": s.ha_only}, [line])
    else:
        _report(ctx.path, as_json, {"ha_only": s.ha_only}, [line])


def _show(as_json: bool, data: dict[str, Any], lines: list[str]) -> None:
    if as_json:
        render.emit_json(data)
    else:
        for line in lines:
            render.echo(line)


@hagroup.command()
@click.option("--mode", type=click.Choice(RECOVERY_MODES, case_sensitive=False),
              help="activeBasic: recovery inside calls; activeEnhanced: also in the background.")
@click.option("--show", is_flag=True, help="Show the current mode.")
@json_option
def recoverymode(mode: str | None, show: bool, as_json: bool) -> None:
    """Set or show the recovery mode (VirtualTokenActiveRecovery)."""
    if (mode is None) == (not show):
        raise click.UsageError("give exactly one of --mode | --show")
    ctx = app()
    if show:
        s = _settings()
        _show(as_json, {"recovery_mode": s.recovery_mode}, [f"HA recovery mode: {s.recovery_mode}"])
        return
    canonical = next(m for m in RECOVERY_MODES if m.lower() == str(mode).lower())
    with ctx.edit() as doc:
        haedit.set_setting(doc, VT, "VirtualTokenActiveRecovery", canonical)
    _report(ctx.path, as_json, {"recovery_mode": canonical}, [f"HA recovery mode: {canonical}"])


@hagroup.command()
@click.option("--enable", is_flag=True, help="Log HA events to haLogPath/haErrorLog.txt.")
@click.option("--disable", is_flag=True, help="Stop logging HA events.")
@click.option("--path", "log_path", metavar="DIR", help="Directory of haErrorLog.txt.")
@click.option("--maxlength", type=int, metavar="BYTES", help="Rotate the log past this size.")
@click.option("--format", "log_format", type=click.Choice(["text", "json"]),
              help="Luna's text lines, or one JSON object per event (haLogFormat).")
@click.option("--show", is_flag=True, help="Show the HA log settings.")
@json_option
def halog(enable: bool, disable: bool, log_path: str | None, maxlength: int | None,
          log_format: str | None, show: bool, as_json: bool) -> None:
    """Configure the HA log (haLogStatus, haLogPath, logLen; haLogFormat in hacli's section)."""
    if enable and disable:
        raise click.UsageError("give only one of --enable | --disable")
    changes = (enable or disable or log_path is not None or maxlength is not None
               or log_format is not None)
    if show == bool(changes):
        raise click.UsageError("give --show, or any of --enable | --disable, --path, "
                               "--maxlength, --format")
    ctx = app()
    if show:
        s = _settings()
    else:
        updates = []
        if maxlength is not None:
            updates.append(("logLen", str(maxlength)))
        if log_path is not None:
            updates.append(("haLogPath", log_path))
        if enable or disable:
            updates.append(("haLogStatus", "enabled" if enable else "disabled"))
        with ctx.edit() as doc:  # all or nothing: the write check sees every update
            for key, value in updates:
                haedit.set_setting(doc, HACONF, key, value)
            if log_format is not None:
                haedit.set_setting(doc, HACLI_SECTION, "haLogFormat", log_format)
        s = _settings(doc)
    data = {"ha_log": s.ha_log_enabled, "ha_log_path": s.ha_log_path, "log_len": s.log_len,
            "ha_log_format": s.ha_log_format}
    lines = [
        f"HA logging: {'enabled' if s.ha_log_enabled else 'disabled'}",
        f"HA log path: {s.ha_log_path or '(not set)'}",
        f"HA log max length: {s.log_len} bytes",
        f"HA log format: {s.ha_log_format}",
    ]
    if show:
        _show(as_json, data, lines)
    else:
        _report(ctx.path, as_json, data, lines)


def _members_arg(value: str) -> list[str]:
    return [m.strip() for m in value.split(",")]


def _group_dict(g: Any) -> dict[str, Any]:
    return {
        "label": g.label,
        "serial": g.serial,
        "synchronization": g.synchronize,
        "members": [{"serial": m} for m in g.members],
        "standby": list(g.standby),
    }


def transport_options(f):
    """``--so-pin-file`` and ``--no-transport-key`` for commands that add members."""
    f = so_pin_file_option(f)
    return click.option("--no-transport-key", is_flag=True,
                        help="Do not set up the group's transport key on the members.")(f)


def _with_members(doc: Document, g: GroupConf, so_pin_file: str | None,
                  skip: bool) -> dict[str, str]:
    """Set up the transport key for the edited document, before it is written:
    a failure leaves the file untouched.  The document is judged first, so a
    group the file could not hold touches no member."""
    ctx = app()
    ctx.verify_edit(doc)
    if skip:
        return {}
    from hacli.cli.members import setup_transport_key

    config = load_config(doc, str(ctx.path))
    return setup_transport_key(config, config.group(g.label), so_pin_file, config.lab_dir)


@hagroup.command()
@click.option("--label", required=True, help="Group label.")
@click.option("--serial", help="Group serial (default: 1 + the first member's serial).")
@click.option("--members", required=True, metavar="SN[,SN...]", help="Member serial numbers.")
@transport_options
@json_option
def creategroup(label: str, serial: str | None, members: str, so_pin_file: str | None,
                no_transport_key: bool, as_json: bool) -> None:
    """Create an HA group (VirtualTokenNN entries plus HASynchronize).

    When hacli can reach the members (their modules are listed in [hacli]),
    the group's transport key is set up on each with the SO PIN.
    """
    ctx = app()
    with ctx.edit() as doc:
        g = haedit.create_group(doc, label, _members_arg(members), serial)
        keys = _with_members(doc, g, so_pin_file, no_transport_key)
    _report(ctx.path, as_json, {"group": _group_dict(g), "transport_key": keys},
            [f"Created HA group {g.label} (serial {g.serial}) with members {', '.join(g.members)}",
             *_key_lines(keys)])


def _key_lines(keys: dict[str, str]) -> list[str]:
    return [f"Transport key on {serial}: {outcome}" for serial, outcome in keys.items()]


@hagroup.command()
@click.option("--group", "label", required=True, help="Group label.")
@click.option("--serial", required=True, help="Serial number of the member to add.")
@transport_options
@json_option
def addmember(label: str, serial: str, so_pin_file: str | None, no_transport_key: bool,
              as_json: bool) -> None:
    """Add a member to an HA group (and give it the group's transport key)."""
    ctx = app()
    with ctx.edit() as doc:
        g = haedit.add_member(doc, label, serial)
        keys = _with_members(doc, g, so_pin_file, no_transport_key)
    from hacli.cli.members import log_event

    log_event(load_config(doc, str(ctx.path)), g.label, serial.strip(), "added")
    _report(ctx.path, as_json, {"group": _group_dict(g), "transport_key": keys},
            [f"Added {serial.strip()} to {g.label}; members: {', '.join(g.members)}",
             *_key_lines(keys)])


@hagroup.command()
@click.option("--group", "label", required=True, help="Group label.")
@click.option("--serial", required=True, help="Serial number of the member to remove.")
@json_option
def removemember(label: str, serial: str, as_json: bool) -> None:
    """Remove a member from an HA group."""
    ctx = app()
    with ctx.edit() as doc:
        g = haedit.remove_member(doc, label, serial)
    from hacli.cli.members import log_event

    log_event(load_config(doc, str(ctx.path)), g.label, serial, "removed")
    _report(ctx.path, as_json, {"group": _group_dict(g)},
            [f"Removed {serial} from {g.label}; members: {', '.join(g.members)}"])


def _standby_list(g: GroupConf) -> str:
    return ", ".join(g.standby) or "<none>"


def _change_standby(edit: Callable[[Document, str, str], GroupConf], label: str, serial: str,
                    as_json: bool, role: str) -> None:
    ctx = app()
    with ctx.edit() as doc:
        g = edit(doc, label, serial)
    _report(ctx.path, as_json, {"group": _group_dict(g)},
            [f"{serial.strip()} is {role} member of {g.label}; standby members: "
             f"{_standby_list(g)}"])


@hagroup.command()
@click.option("--group", "label", required=True, help="Group label.")
@click.option("--serial", required=True, help="Serial number of the member to make standby.")
@json_option
def addstandby(label: str, serial: str, as_json: bool) -> None:
    """Make a member of an HA group a standby member (VirtualTokenNNStandby).

    A standby member receives every replicated object but serves no calls
    while an active member serves; it steps in when no active member is left.
    As in Luna, add it as a member first (hagroup addmember).
    """
    _change_standby(haedit.add_standby, label, serial, as_json, "a standby")


@hagroup.command()
@click.option("--group", "label", required=True, help="Group label.")
@click.option("--serial", required=True, help="Serial number of the standby member.")
@json_option
def removestandby(label: str, serial: str, as_json: bool) -> None:
    """Make a standby member of an HA group an active member again."""
    _change_standby(haedit.remove_standby, label, serial, as_json, "an active")


@hagroup.command()
@click.option("--group", "label", required=True, help="Group label.")
@click.option("--serial", help="Only this member (default: every member that is down).")
@json_option
def recover(label: str, serial: str | None, as_json: bool) -> int:
    """Try to recover failed members now (lunacm's hagroup recover).

    One attempt on each member that is down (or on --serial), also when the
    automatic attempts (reconnAtt) are used up or automatic recovery is off.
    A recovered member's attempt count starts afresh and "recovered" goes to
    the HA log.  This command runs its own HA engine: it tells whether each
    member serves now for any new process.  An application that keeps its
    own engine running (the menu, a library user) recovers members through
    that engine (the menu's 122; HAGroup.recover).  Exit 1 when a member is
    still down.
    """
    from hacli.engine import Engine

    ctx = app()
    config = ctx.config()
    try:
        conf = config.group(label)
    except KeyError:
        raise UsageError(f"no HA group labelled {label!r} "
                         f"(groups: {', '.join(g.label for g in config.groups) or 'none'})"
                         ) from None
    if serial is not None and serial not in conf.members:
        raise UsageError(f"{serial} is not a member of {conf.label} "
                         f"(members: {', '.join(conf.members)})")
    with Engine(config, groups=[conf.label]) as engine:
        results = engine.group(conf.label).recover(serial)
    if as_json:
        render.emit_json({"group": conf.label, "members": [r.as_dict() for r in results]})
    else:
        render.echo(f"HA group {conf.label}:")
        for r in results:
            render.echo(f"HSM {r.serial} - {r.describe()}")
    return 0 if all(r.ok for r in results) else int(ExitStatus.FAILED)


@hagroup.command()
@click.option("--label", required=True, help="Label of the group to delete.")
@json_option
def deletegroup(label: str, as_json: bool) -> None:
    """Delete an HA group (the other groups are renumbered densely)."""
    ctx = app()
    with ctx.edit() as doc:
        g = haedit.delete_group(doc, label)
    _report(ctx.path, as_json, {"deleted": _group_dict(g)}, [f"Deleted HA group {g.label}"])


@hagroup.command()
@click.option("--no-probe", is_flag=True, help="Do not contact the members (configuration only).")
@pin_file_option
@json_option
def listgroups(no_probe: bool, pin_file: str | None, as_json: bool) -> None:
    """List the HA settings and every group, like lunacm's listgroups.

    Members that hacli can reach (their modules are listed in [hacli]) are
    probed: alive or down, with their token label.  With a PIN (--pin-file,
    $HACLI_PIN, or a lab's), their token objects are compared: Needs sync
    (shown only then, as Luna does).  HA Group Slot ID is the group's virtual
    slot as the menu numbers it.
    """
    ctx = app()
    config = ctx.config()
    s, groups = config.settings, config.groups
    live: dict[str, dict[str, Any]] = {}
    pin = None
    if not no_probe:
        from hacli.cli.members import live_members

        pin = find_pin(pin_file, config.lab_dir)
        live = live_members(config, pin)
    slot_ids = {n.group: n.slot_id for n in number_slots(groups, s.ha_only) if n.member is None}

    def member(serial: str) -> dict[str, Any]:
        info = live.get(serial, {"status": "unknown", "label": "", "needs_sync": None})
        return {"serial": serial, **info}

    if as_json:
        render.emit_json({
            "file": str(ctx.path),
            "settings": settings_dict(s),
            "groups": [{**_group_dict(g), "slot_id": slot_ids[g.label],
                        "members": [member(m) for m in g.members]} for g in groups],
        })
        return
    retries = "unlimited" if s.reconn_att < 0 else str(s.reconn_att)
    render.fields([
        ("HA auto recovery", "enabled" if s.reconn_att != 0 else "disabled"),
        ("HA recovery mode", s.recovery_mode),
        ("Maximum auto recovery retry", retries),
        ("Auto recovery poll interval", f"{s.auto_reconnect_interval} seconds"),
        ("HA logging", "enabled" if s.ha_log_enabled else "disabled"),
        ("Only Show HA Slots", "yes" if s.ha_only else "no"),
    ])
    if not groups:
        render.echo("")
        render.echo("No HA groups are configured (hacli hagroup creategroup ...).")
    for g in groups:
        rows = [member(m) for m in g.members]
        sync = {r["needs_sync"] for r in rows}
        render.echo("")
        render.fields([
            ("HA Group Label", g.label),
            ("HA Group Number", g.serial),
            ("HA Group Slot ID", slot_ids[g.label]),
            ("Synchronization", "enabled" if g.synchronize else "disabled"),
            ("Group Members", ", ".join(g.members)),
            *([("Needs sync", "yes" if True in sync else "no" if sync == {False} else "unknown")]
              if pin is not None else []),
            ("Standby Members", _standby_list(g)),
        ])
        render.echo("")
        render.table(["#", "Member S/N", "Member Label", "Status"],
                     [[i + 1, r["serial"], r["label"] or "-", r["status"]]
                      for i, r in enumerate(rows)])
    render.echo("")
    render.echo(f"({ctx.path})")


@hagroup.command()
@click.option("--group", "label", help="Group label (default: the only one).")
@click.option("--enable", is_flag=True,
              help="Turn on automatic synchronisation of --group (HASynchronize); "
                   "nothing is copied now.")
@click.option("--disable", is_flag=True,
              help="Turn off automatic synchronisation of --group (HASynchronize).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--adopt", is_flag=True,
              help="Also copy conflicts: objects some members hold that no change "
                   "recorded by hacli explains (lunacm's union).")
@pin_file_option
@json_option
def synchronize(label: str | None, enable: bool, disable: bool, dry_run: bool, adopt: bool,
                pin_file: str | None, as_json: bool) -> int:
    """Bring every member up to date now, or turn automatic synchronisation
    on or off (lunacm's synchronize).

    With --enable or --disable (and --group), sets the group's HASynchronize
    flag, as lunacm does, and copies nothing.  Otherwise replays the changes
    members missed while they were down (from the group's journal: destroys
    first, so a destroyed key never comes back; then attribute changes and
    objects created meanwhile), copies session objects, and reports
    conflicts: objects some members hold that nothing recorded explains.
    Those are copied only with --adopt.  Secret and private keys travel only
    wrapped under the group's transport key.  Exit 1 when an object could not
    be copied or a conflict is left.
    \b
    Examples: hacli hagroup synchronize --dry-run
              hacli hagroup synchronize --group myHAgroup --disable
    """
    if enable or disable:
        return _set_synchronize(label, enable, disable, dry_run or adopt or bool(pin_file),
                                as_json)
    from hacli.cli.pin import resolve_pin
    from hacli.engine import Engine

    config = app().config()
    pin = resolve_pin(pin_file, config.lab_dir)
    with Engine(config, groups=[label] if label else None) as engine:
        report = engine.group(label).synchronize(pin, adopt=adopt, dry_run=dry_run)
    if as_json:
        render.emit_json(report.as_dict())
    else:
        for serial, obj in report.destroys:
            render.echo(f"{'Would destroy' if dry_run else 'Destroyed'} on {serial} "
                        f"(destroyed through the group while it was down): {obj.describe()}")
        for serial, obj, how in report.copied:
            render.echo(f"{'Would copy' if dry_run else 'Copied'} to {serial} ({how}): "
                        f"{obj.describe()}")
        for f in report.failed:
            render.echo(f"Not copied to {f.serial}: {f.object.describe()} - {f.ckr} {f.reason}")
        for c in report.conflicts:
            render.echo(f"Conflict: {c.object.describe()} is on {', '.join(c.holders)} but not "
                        f"on {c.serial}, and no change recorded by hacli explains it; "
                        "not copied (--adopt copies it)")
        for serial in report.unreachable:
            render.echo(f"Member {serial} is down: not synchronised")
        if dry_run:
            render.echo(f"HA group {report.group}: plan only, nothing changed "
                        f"({len(report.destroys)} destroy(s), {len(report.copied)} copy(ies), "
                        f"{len(report.conflicts)} conflict(s))")
        else:
            state = "in sync" if report.complete else "NOT in sync"
            render.echo(f"HA group {report.group}: {len(report.copied)} object(s) copied, "
                        f"{len(report.destroys)} destroyed; {state}")
    return 0 if report.complete else int(ExitStatus.FAILED)


def _set_synchronize(label: str | None, enable: bool, disable: bool, copy_options: bool,
                     as_json: bool) -> int:
    """``hagroup synchronize --group L --enable | --disable``: HASynchronize only."""
    if enable and disable:
        raise click.UsageError("give only one of --enable | --disable")
    if label is None:
        raise click.UsageError("--enable and --disable need --group LABEL")
    if copy_options:
        raise click.UsageError("--enable and --disable copy nothing: "
                               "--dry-run, --adopt and --pin-file do not go with them")
    ctx = app()
    with ctx.edit() as doc:
        g = haedit.set_synchronize(doc, label, enable)
    _report(ctx.path, as_json, {"group": _group_dict(g)},
            [f"HA group {g.label}: synchronization {'enabled' if enable else 'disabled'}"])
    return 0
