"""The ``hacli`` click group.

Subcommand modules are imported only when their command runs (a lazy group,
after click's documented pattern), so ``hacli --help`` imports neither
python-pkcs11 nor rich.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from hacli import __version__
from hacli.cli.context import AppContext

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
    "serve": ("hacli.cli.serve", "serve",
              "Serve the HA slots to any PKCS#11 application (p11-kit's protocol)."),
}


class LazyGroup(click.Group):
    """A group whose subcommands load on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _help = entry
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--conf",
    "conf_path",
    metavar="PATH",
    envvar="HACLI_CONF",
    type=click.Path(dir_okay=False),
    help="Chrystoki.conf or crystoki.ini to use (default: discovered, see the README).",
)
@click.version_option(__version__, "-V", "--version", prog_name="hacli")
@click.pass_context
def cli(ctx: click.Context, conf_path: str | None) -> Any:
    """Manage and demonstrate PKCS#11 high-availability (HA) groups.

    lunacm-style commands edit the HA sections of Chrystoki.conf / crystoki.ini.
    Exit codes: 0 success, 1 failed, 2 usage error or invalid value (nothing
    changed); `ha status` also 3 degraded, 4 group down.
    """
    ctx.obj = AppContext(conf_option=conf_path)
    if ctx.invoked_subcommand is None:
        # `hacli` alone opens the CKDemo-style menu, as CKDemo does.
        return ctx.invoke(LazyGroup.get_command(cli, ctx, "ckdemo"))  # type: ignore[arg-type]
    return None


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: run the CLI; errors become one line and an exit code."""
    from hacli.cli.errors import report

    try:
        rv = cli.main(args=argv, prog_name="hacli", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as e:  # the one place where every error becomes a line
        sys.exit(int(report(e)))
    sys.exit(int(rv) if isinstance(rv, int) else 0)
