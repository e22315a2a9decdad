#!/usr/bin/env python3
"""Generate completions/, man/hacli.1 and the README's lunacm table from the application.

    python scripts/gen_completions.py           # write the files
    python scripts/gen_completions.py --check   # exit 1 if a committed file is stale

Completions are click's own shell-completion sources (they call back into
``hacli`` at completion time, so they never go stale for options); the man page
is rendered from the same command tree by a small roff writer, so that both
always describe the installed application.  The README's table of lunacm's
option spellings is :func:`hacli.cli.luna.markdown_table`, between its markers.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import click
from click.shell_completion import get_completion_class

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hacli import __version__  # noqa: E402
from hacli.cli import luna  # noqa: E402
from hacli.cli.main import cli  # noqa: E402

COMPLETIONS = {"bash": "hacli.bash", "zsh": "_hacli", "fish": "hacli.fish"}
README = ROOT / "README.md"
#: The README's generated block: from the end of the first marker's line to the second.
LUNA_BEGIN, LUNA_END = "<!-- lunacm-spellings:", "<!-- /lunacm-spellings -->"


def completion_source(shell: str) -> str:
    """click's completion script for ``shell``."""
    cls = get_completion_class(shell)
    assert cls is not None
    return cls(cli, {}, "hacli", "_HACLI_COMPLETE").source().rstrip("\n") + "\n"


def _roff(text: str) -> str:
    lines = []
    for line in text.splitlines():
        line = line.replace("\\", "\\\\").replace("-", "\\-")
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _walk(cmd: click.Command, path: list[str], ctx: click.Context):  # type: ignore[no-untyped-def]
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], click.Context(sub, info_name=name, parent=ctx))


def man_page() -> str:
    """The hacli(1) man page in roff."""
    root_ctx = click.Context(cli, info_name="hacli")
    out = [
        f'.TH HACLI 1 "" "hacli {__version__}" "User Commands"',
        ".SH NAME",
        "hacli \\- manage and demonstrate PKCS#11 high\\-availability groups",
        ".SH SYNOPSIS",
        ".B hacli",
        "[\\-\\-conf PATH] COMMAND [OPTIONS]",
        ".SH DESCRIPTION",
        _roff(inspect.cleandoc(cli.help or "").replace("\b\n", "")),
        ".SH COMMANDS",
    ]
    for path, cmd, ctx in _walk(cli, ["hacli"], root_ctx):
        if len(path) == 1:
            continue
        out.append(f".SS {_roff(' '.join(path))}")
        out.append(_roff(cmd.get_usage(ctx).replace("Usage: ", "")))
        out.append(".PP")
        out.append(_roff(inspect.cleandoc(cmd.help or "").replace("\b\n", "")))
        for param in cmd.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or "--help" in record[0]:
                continue
            out += [".TP", f"\\fB{_roff(record[0])}\\fR", _roff(record[1] or "")]
    out += [
        ".SH EXIT STATUS",
        "0 success; 1 the operation failed (also: a configuration file that cannot be",
        "parsed or breaks a rule, found when reading it); 2 usage error or a value",
        "refused before it was written (nothing was changed); ha status only: 3 degraded",
        "(a member is down), 4 group down;",
        "130 interrupted by Ctrl\\-C.",
        ".SH LUNACM SPELLINGS",
        "lunacm's single\\-dash option names are accepted as aliases, whatever the case:",
        *[line for row in luna.SPELLINGS if row.option != luna.REFUSED for line in (
            ".TP", _roff(", ".join(row.luna)),
            _roff(row.option + (f" (in {', '.join(row.commands)})" if row.commands else "")))],
        ".TP", "\\-password, \\-p",
        "refused: hacli takes no PIN on the command line (\\-\\-pin\\-file, $HACLI_PIN, a prompt).",
        ".SH FILES",
        "Configuration discovery, first that exists: \\-\\-conf PATH;",
        "$ChrystokiConfigurationPath/Chrystoki.conf (or crystoki.ini there);",
        "/etc/Chrystoki.conf; the lab's Chrystoki.conf.",
        ".SH SEE ALSO",
        "lunacm(1), pkcs11\\-tool(1), softhsm2\\-util(1), p11\\-kit(8)",
    ]
    return "\n".join(out) + "\n"


def readme() -> str:
    """README.md with its lunacm table regenerated from :data:`hacli.cli.luna.SPELLINGS`."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n", text.index(LUNA_BEGIN)) + 1
    return text[:start] + luna.markdown_table() + text[text.index(LUNA_END, start):]


def expected() -> dict[Path, str]:
    """Every generated file and its content."""
    files = {ROOT / "completions" / name: completion_source(sh) for sh, name in COMPLETIONS.items()}
    files[ROOT / "man" / "hacli.1"] = man_page()
    files[README] = readme()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is stale")
    args = parser.parse_args()
    stale = []
    for path, text in expected().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale (run: make completions): " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
