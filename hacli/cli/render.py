"""Rendering, kept apart from logic: JSON, rich tables, plain text.

Commands build plain data (dicts, lists of rows) and hand it here.  rich is
imported only when a table is drawn for a terminal, so scripted use and
``--help`` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import click


def plain() -> bool:
    """True when output must be plain: not a terminal, or ``NO_COLOR`` set."""
    return bool(os.environ.get("NO_COLOR")) or not sys.stdout.isatty()


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON (one document, indented, keys in insertion order)."""
    click.echo(json.dumps(data, indent=2))


def echo(text: str = "") -> None:
    """Print one line of human output."""
    click.echo(text)


def warn(text: str) -> None:
    """Print a warning line on stderr."""
    click.echo(f"Warning: {text}", err=True)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """Right-aligned ``name: value`` lines, as lunacm prints settings."""
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        echo(f"{key.rjust(width)} : {value}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A table: rich for a colour terminal, aligned plain text otherwise."""
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if title:  # a line of its own: rich would wrap a title wider than the table
        echo(title)
    if plain():
        widths = [len(h) for h in headers]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
        echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
        echo("  ".join("=" * w for w in widths))
        for row in cells:
            echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
        return
    from rich.console import Console
    from rich.table import Table

    t = Table()
    for h in headers:
        t.add_column(h)
    for row in cells:
        t.add_row(*row)
    Console().print(t)
