"""The ``hacli`` click group.

Subcommand modules are imported only when their command runs (a lazy group,
after click's documented pattern), so ``hacli --help`` imports neither
python-pkcs11 nor rich.  Each command tree is prepared as it is loaded
(:func:`prepare`): every subcommand takes ``--conf`` after its name too, and
lunacm's spellings of its options (:mod:`hacli.cli.luna`), so a command added
to :data:`COMMANDS` gets both without declaring them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from hacli import __version__
from hacli.cli import luna
from hacli.cli.context import CONF_HELP, AppContext, conf_option

#: command name -> (module, attribute, one-line help).  The help is repeated
#: here so that listing commands does not import their modules.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "hagroup": ("hacli.cli.hagroup", "hagroup", "HA group settings, as lunacm's hagroup commands."),
    "ckdemo": ("hacli.cli.menu", "ckdemo", "The CKDemo-style numbered menu (also: hacli alone)."),
    "conf": ("hacli.cli.conf", "conf", "Show, get, set and check configuration values."),
    "ha": ("hacli.cli.ha", "ha", "Live HA status of the configured groups."),
    "multitoken": ("hacli.cli.multitoken", "multitoken",
                   "Load an HA slot or one member, after Luna's multitoken."),
    "lab": ("hacli.cli.lab", "lab", "Member HSMs as processes, to crash, freeze and restore."),
    # one-shot commands for scripts, pkcs11-tool's habits (hacli/cli/tokens.py)
    "slots": ("hacli.cli.tokens", "slots", "Slots, numbered as the menu does; HA slots marked."),
    "objects": ("hacli.cli.tokens", "objects", "Objects on a slot, like pkcs11-tool -O."),
    "mechanisms": ("hacli.cli.tokens", "mechanisms", "Mechanisms of a slot, like pkcs11-tool -M."),
    "keygen": ("hacli.cli.tokens", "keygen", "Generate a token key (pair) on a slot."),
    "sign": ("hacli.cli.tokens", "sign", "Sign a file with a key on a slot."),
    "verify": ("hacli.cli.tokens", "verify", "Verify a signature with a key on a slot."),
    "encrypt": ("hacli.cli.tokens", "encrypt", "Encrypt a file with a key on a slot."),
    "decrypt": ("hacli.cli.tokens", "decrypt", "Decrypt a file with a key on a slot."),
    "random": ("hacli.cli.tokens", "random", "Random bytes from a slot's token."),
    "serve": ("hacli.cli.serve", "serve",
              "Serve the HA slots to any PKCS#11 application (p11-kit's protocol)."),
}


#: Commands already given their shared options (a tree is prepared once).
_PREPARED: set[int] = set()


def prepare(command: click.Command, path: str) -> click.Command:
    """Give ``command`` (named ``path``) and every subcommand of it the options
    all subcommands share: ``--conf`` after the subcommand's name, and
    lunacm's spellings of their own options.  Idempotent."""
    if id(command) in _PREPARED:
        return command
    _PREPARED.add(id(command))
    if not any("--conf" in p.opts for p in command.params if isinstance(p, click.Option)):
        command.params.append(conf_option())
    luna.add_spellings(command, path)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            prepare(sub, f"{path} {name}")
    return command


class LazyGroup(click.Group):
    """A group whose subcommands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _help = entry
        return prepare(getattr(importlib.import_module(module), attr), cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    # lunacm's options are case-insensitive (luna.normalize)
    context_settings={"help_option_names": ["-h", "--help"],
                      "token_normalize_func": luna.normalize},
)
@click.option(
    "--conf",
    "conf_path",
    metavar="PATH",
    envvar="HACLI_CONF",
    type=click.Path(dir_okay=False),
    help=CONF_HELP,
)
@click.version_option(__version__, "-V", "--version", prog_name="hacli")
@click.pass_context
def cli(ctx: click.Context, conf_path: str | None) -> Any:
    """Manage and demonstrate PKCS#11 high-availability (HA) groups.

    lunacm-style commands edit the HA sections of Chrystoki.conf / crystoki.ini;
    lunacm's spellings of their options work too (-serialnumber, -group, -count).
    Exit codes: 0 success, 1 failed, 2 usage error or invalid value (nothing
    changed); `ha status` also 3 degraded, 4 group down; 130 interrupted (Ctrl-C).
    """
    ctx.obj = AppContext(conf_option=conf_path)
    if ctx.invoked_subcommand is None:
        # `hacli` alone opens the CKDemo-style menu, as CKDemo does.
        return ctx.invoke(LazyGroup.get_command(cli, ctx, "ckdemo"))  # type: ignore[arg-type]
    return None


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the CLI; errors become one line and an exit code.

    Ctrl-C ends any command with 130 and no message or traceback (also at a
    prompt, where click calls it ``Abort``).  A command group given without a
    subcommand (``hacli hagroup``) prints its help and exits 0.
    """
    from hacli.cli.errors import report

    try:
        rv = cli.main(args=argv, prog_name="hacli", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        # asking a group for nothing is asking for its help, not an error
        click.echo(e.ctx.get_help())
        sys.exit(0)
    except BrokenPipeError:
        sys.exit(1)
    except (Exception, KeyboardInterrupt) as e:  # the one place where every error becomes a line
        sys.exit(int(report(e)))
    sys.exit(int(rv) if isinstance(rv, int) else 0)
