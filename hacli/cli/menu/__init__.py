"""``hacli ckdemo`` (and ``hacli`` alone): the CKDemo-style numbered menu.

The sections, numbers and names are CKDemo's, as in the origin document; the
options this tool carries out drive :mod:`hacli.engine` on member slots and HA
virtual slots; the others answer ``CKR_FUNCTION_NOT_SUPPORTED``.  For a lab
group (``LabDir`` in the ``hacli`` section) an extra section crashes, freezes
and restores members.  See docs/menu.md.
"""

from __future__ import annotations

import click

from hacli.cli.context import app
from hacli.pins import Role


@click.command()
@click.option("--pin-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Read the user (Crypto Officer) PIN for 3 Login / 51 HA Login from "
                   "FILE (no prompt).")
@click.option("--so-pin-file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Read the Security Officer PIN for 3 Login as SO and 6 Init Token "
                   "from FILE (no prompt).")
@click.option("--guide", metavar="TEXT",
              help="Text shown once, after the menu and before the first prompt (the "
                   "`make demo` guide: it stays on screen in a 24-line terminal).")
def ckdemo(pin_file: str | None, so_pin_file: str | None, guide: str | None) -> int:
    """The CKDemo-style numbered menu (also: hacli alone).

    Reads one answer per line, from a terminal or piped stdin; end of input
    or 0 quits (exit 0).  The PIN comes from --pin-file, HACLI_PIN, or a
    hidden prompt (for a lab group an empty answer uses the lab's PIN); the
    SO PIN from --so-pin-file, HACLI_SO_PIN, or a prompt.  A PIN file that
    is empty is refused before the menu opens (exit 2).
    """
    from hacli.cli.menu.actions import Ctx
    from hacli.cli.menu.loop import run
    from hacli.cli.menu.prompts import Prompter
    from hacli.cli.menu.state import MenuState, find_lab_dir

    context = app()
    path = context.path
    try:
        lab_dir = find_lab_dir(context.load().get)
    except Exception:  # an unreadable file: the menu still opens; actions report it
        lab_dir = None
    state = MenuState(conf_path=path, load_config=context.config, lab_dir=lab_dir,
                      pin_file=pin_file, so_pin_file=so_pin_file)
    for role in Role:  # an unusable PIN file is refused now, before any login is tried
        state.configured_pin(role)
    io = Prompter()
    io.hide(*state.known_pins())  # a PIN is never echoed, even one line off
    return run(Ctx(state, io), guide)


__all__ = ["ckdemo"]
