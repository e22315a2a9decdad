"""What every command shares: the configuration file, found once, and ``--conf``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hacli.cli import render

if TYPE_CHECKING:
    from hacli.conf.check import WriteCheck
    from hacli.conf.document import Document
    from hacli.conf.model_types import HAConfig


@dataclass
class AppContext:
    """Per-invocation state, stored as the click context's ``obj``."""

    conf_option: str | None = None
    _path: Path | None = field(default=None, repr=False)
    _write_check: WriteCheck | None = field(default=None, repr=False)

    def use_conf(self, path: str) -> None:
        """``--conf PATH`` given after the subcommand: it wins over the global one."""
        self.conf_option = path
        self._path = None

    @property
    def path(self) -> Path:
        """The configuration file, by the discovery order of the README."""
        if self._path is None:
            from hacli.conf.store import discover

            self._path = discover(self.conf_option)
        return self._path

    def load(self) -> Document:
        """Read and parse the configuration file."""
        from hacli.conf.store import load

        return load(self.path)

    def config(self) -> HAConfig:
        """The typed HA model of the configuration file, validated (exit 1 when
        the file breaks a rule)."""
        from hacli.conf.model import load_config

        return load_config(self.load(), str(self.path))

    @contextmanager
    def edit(self, *, force: bool | None = None, repair: bool = False) -> Iterator[Document]:
        """Lock, load, yield, write back only if changed (atomically) and allowed.

        What may be written is judged by :class:`~hacli.conf.check.WriteCheck`
        (the rules every reader applies): a file with an error is refused
        unless ``repair``; a change that adds an error, or a warning unless
        ``force``, is refused (exit 2, nothing written).  What ``--force`` let
        through is printed as warnings once the file is written.
        """
        from hacli.conf.check import WriteCheck
        from hacli.conf.store import edit

        with edit(self.path) as doc:
            self._write_check = WriteCheck(doc, force=force, repair=repair)
            yield doc
            warnings = self.verify_edit(doc)
        self._write_check = None
        for warning in warnings:
            render.warn(warning)

    def verify_edit(self, doc: Document) -> list[str]:
        """Judge the document of the running :meth:`edit` now, before a command
        acts on it beyond the file (members): raises when it may not be written."""
        assert self._write_check is not None, "verify_edit outside edit()"
        return self._write_check.verify(doc)


def app(ctx: click.Context | None = None) -> AppContext:
    """The :class:`AppContext` of the running command."""
    ctx = ctx or click.get_current_context()
    obj = ctx.find_object(AppContext)
    if obj is None:  # commands invoked without the root group (tests)
        obj = ctx.ensure_object(AppContext)
    return obj


#: Help of ``--conf``, the global option and the one every subcommand takes.
CONF_HELP = "Chrystoki.conf or crystoki.ini to use (default: discovered, see the README)."


def _use_conf(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        app(ctx).use_conf(value)


def conf_option() -> click.Option:
    """``--conf PATH`` for a subcommand (``hacli ha status --conf X``): the global
    option, accepted after the subcommand too.  The entry point gives it to
    every subcommand (:func:`hacli.cli.main.prepare`), so no command declares it."""
    return click.Option(["--conf"], metavar="PATH", type=click.Path(dir_okay=False),
                        expose_value=False, is_eager=True, callback=_use_conf, help=CONF_HELP)


def json_option(f):
    """``--json``: machine-readable output (a documented contract)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
