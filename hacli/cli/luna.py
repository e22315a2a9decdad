"""lunacm's spellings of options: one table, one mechanism, every command.

lunacm users type ``hagroup retry -count 3 -interval 60`` and ``hagroup
addmember -group g -serialnumber 1234``: single-dash long options, each with a
short "shortcut" (``-se``, ``-sl``, ``-g``), matched case-insensitively
(``-SerialNumber`` works in lunacm).  :data:`SPELLINGS` is the one table from
those spellings to hacli's GNU options; :func:`add_spellings` gives every
command that has the GNU option the lunacm spellings of it as aliases, so they
show in ``--help`` and a new command gets them by naming its options as the
others do.  The entry point applies it to each command tree as it is loaded
(:func:`hacli.cli.main.prepare`); the README's table and the man page are
generated from :data:`SPELLINGS` (:func:`markdown_table`,
``scripts/gen_completions.py``).

lunacm's ``-password`` is the one spelling hacli refuses: a PIN on the command
line is readable by every user of the machine (process list, shell history),
so hacli takes PINs only from a file, the environment or a hidden prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import click

#: hacli's GNU option lunacm's ``-password`` stands for: none, it is refused.
REFUSED = ""

#: Options that take a PIN: a command with one of them gets the refusing ``-password``.
PIN_OPTIONS = ("--pin-file", "--so-pin-file")


@dataclass(frozen=True)
class Spelling:
    """lunacm's spelling(s) of one option, and the hacli option they stand for."""

    #: lunacm's option name first, then its shortcut(s) (and hacli's own short forms).
    luna: tuple[str, ...]
    #: hacli's GNU option (:data:`REFUSED` for ``-password``).
    option: str
    #: Only in these commands (``"hagroup creategroup"``), where it replaces the
    #: rows without ``commands`` that share a spelling; empty: every command
    #: that has :attr:`option`.
    commands: tuple[str, ...] = ()
    #: A note for the README's table.
    note: str = ""


#: The one table: lunacm spelling -> hacli option.  Names and shortcuts are
#: those of lunacm's command reference (``hagroup addmember``: ``-serialnumber``
#: ``-se``, ``-slot`` ``-sl``, ``-group`` ``-g``, ``-password`` ``-p``;
#: ``-label`` ``-l``, ``-force`` ``-f``); ``-serial`` is hacli's short form.
SPELLINGS: tuple[Spelling, ...] = (
    Spelling(("-serialnumber", "-se", "-serial"), "--serial"),
    Spelling(("-serialnumber", "-se"), "--members", ("hagroup creategroup",),
             "lunacm's creategroup names the group's first member (there `-serial` is "
             "not an alias: `--serial` is the group's own serial)"),
    Spelling(("-group", "-g"), "--group"),
    Spelling(("-label", "-l"), "--label"),
    Spelling(("-slot", "-sl"), "--slot"),
    Spelling(("-count",), "--count"),
    Spelling(("-interval",), "--interval"),
    Spelling(("-force", "-f"), "--force"),
    Spelling(("-enable",), "--enable"),
    Spelling(("-disable",), "--disable"),
    Spelling(("-show",), "--show"),
    Spelling(("-mode",), "--mode"),
    Spelling(("-path",), "--path"),
    Spelling(("-maxlength",), "--maxlength"),
    Spelling(("-password", "-p"), REFUSED, note="refused (exit 2): hacli never takes a PIN "
             "on the command line; use `--pin-file FILE`, `$HACLI_PIN` or the hidden prompt"),
)

PASSWORD_REFUSED = ("hacli never takes a PIN on the command line (any user can read it in "
                    "the process list); give --pin-file FILE, set $HACLI_PIN, or answer "
                    "the hidden prompt")


def normalize(token: str) -> str:
    """lunacm matches options case-insensitively: ``-SerialNumber`` is
    ``-serialnumber``.  click hands its token normaliser option names without
    their dashes (and command names, and choices); one-letter names keep their
    case, so ``-V`` stays apart from a ``-v``."""
    return token.lower() if len(token) > 1 else token


def _rows_for(path: str) -> list[Spelling]:
    """The rows that apply in the command ``path`` (``"hagroup addmember"``)."""
    specific = [s for s in SPELLINGS if path in s.commands]
    taken = {name for s in specific for name in s.luna}
    generic = [s for s in SPELLINGS if not s.commands and not taken & set(s.luna)]
    return specific + generic


def _refuse_password(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        # the value is never repeated: it is a PIN
        raise click.UsageError(f"{param.opts[0]}: {PASSWORD_REFUSED}", ctx=ctx)


def add_spellings(command: click.Command, path: str) -> None:
    """Give ``command`` (named ``path``, e.g. ``"hagroup addmember"``) the
    lunacm spellings of its options, where no option of its own uses them."""
    options = [p for p in command.params if isinstance(p, click.Option)]
    used = {name for p in options for name in (*p.opts, *p.secondary_opts)}
    by_name = {name: p for p in options for name in p.opts}
    for row in _rows_for(path):
        free = [name for name in row.luna if name not in used]
        if not free:
            continue
        if row.option == REFUSED:
            if any(name in by_name for name in PIN_OPTIONS):
                command.params.append(click.Option(
                    free, metavar="PASSWORD", expose_value=False, is_eager=True,
                    callback=_refuse_password,
                    help="lunacm's -password: refused; hacli takes PINs from a file, "
                         "the environment or a hidden prompt."))
                used.update(free)
            continue
        target = by_name.get(row.option)
        if target is None:
            continue
        target.opts.extend(free)
        used.update(free)


def markdown_table(rows: Iterable[Spelling] = SPELLINGS) -> str:
    """The README's table of :data:`SPELLINGS` (generated; a test keeps them equal)."""
    out = ["| lunacm | hacli | where |", "|---|---|---|"]
    for s in rows:
        names = ", ".join(f"`{n}`" for n in s.luna)
        option = f"`{s.option}`" if s.option != REFUSED else "—"
        everywhere = ("every command that takes a PIN" if s.option == REFUSED
                      else "every command with that option")
        where = ", ".join(f"`{c}`" for c in s.commands) or everywhere
        if s.note:
            where = f"{where}; {s.note}"
        out.append(f"| {names} | {option} | {where} |")
    return "\n".join(out) + "\n"


__all__ = ["PASSWORD_REFUSED", "SPELLINGS", "Spelling", "add_spellings", "markdown_table",
           "normalize"]
