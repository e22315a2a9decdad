"""PINs for commands: the options, and a hidden prompt when no source gives one.

Finding a PIN (``--pin-file``, ``$HACLI_PIN``, the lab's PIN file) is
:func:`hacli.pins.find_pin`, the one reader the menu and the lab use too;
this module adds what only a command has: the click options and the prompt.
A PIN is never printed, logged or written anywhere by hacli.
"""

from __future__ import annotations

import sys

import click

from hacli import pins
from hacli.errors import UsageError
from hacli.pins import PinRequest, Role

PIN_ENV = Role.USER.env
SO_PIN_ENV = Role.SO.env


def pin_file_option(f):
    """``--pin-file FILE``: read the user PIN from the first line of FILE."""
    return click.option("--pin-file", metavar="FILE",
                        help=f"Read the PIN from FILE (else ${PIN_ENV}, the lab PIN, a prompt).",
                        )(f)


def so_pin_file_option(f):
    """``--so-pin-file FILE``: the Security Officer PIN, for the transport key."""
    return click.option("--so-pin-file", metavar="FILE",
                        help=f"Read the SO PIN from FILE (else ${SO_PIN_ENV}, the lab's, "
                             "or a prompt).")(f)


def find_pin(pin_file: str | None, lab_dir: str | None = None, *,
             so: bool = False) -> str | None:
    """The user (or SO) PIN from a source that needs no prompt: the file given,
    the environment, the lab's PIN file; None when there is none."""
    found = pins.find_pin(PinRequest(Role.SO if so else Role.USER, pin_file, lab_dir))
    return found.pin if found is not None else None


def resolve_pin(pin_file: str | None, lab_dir: str | None = None, *, so: bool = False) -> str:
    """The user (or SO) PIN: :func:`find_pin`, else a hidden prompt on a terminal."""
    pin = find_pin(pin_file, lab_dir, so=so)
    if pin is not None:
        return pin
    role = Role.SO if so else Role.USER
    if not sys.stdin.isatty():
        raise UsageError(f"no {role.what}: give {role.option} FILE or set {role.env}")
    return str(click.prompt(f"Enter {role.what}", hide_input=True))
