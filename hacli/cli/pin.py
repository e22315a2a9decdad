"""Where a PIN comes from: ``--pin-file``, ``$HACLI_PIN``, the lab, or a hidden prompt.

A PIN is never printed, logged or written anywhere by hacli.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from hacli.errors import UsageError

PIN_ENV = "HACLI_PIN"
SO_PIN_ENV = "HACLI_SO_PIN"


def pin_file_option(f):
    """``--pin-file FILE``: read the user PIN from the first line of FILE."""
    return click.option("--pin-file", metavar="FILE",
                        help=f"Read the PIN from FILE (else ${PIN_ENV}, the lab PIN, a prompt).",
                        )(f)


def read_pin_file(path: str | Path) -> str:
    """The first line of a PIN file, stripped (UsageError when unusable)."""
    try:
        pin = Path(path).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError):
        raise UsageError(f"cannot read a PIN from {path}") from None
    if not pin:
        raise UsageError(f"the PIN file {path} is empty")
    return pin


def so_pin_file_option(f):
    """``--so-pin-file FILE``: the Security Officer PIN, for the transport key."""
    return click.option("--so-pin-file", metavar="FILE",
                        help=f"Read the SO PIN from FILE (else ${SO_PIN_ENV}, the lab's, "
                             "or a prompt).")(f)


def lab_pin_file(lab_dir: str | None, so: bool = False) -> Path | None:
    """The lab's (SO) PIN file when the configuration was written by ``hacli lab up``."""
    if not lab_dir:
        return None
    from hacli.lab import Lab

    lab = Lab(Path(lab_dir))
    path = lab.so_pin_file if so else lab.pin_file
    return path if path.exists() else None


def find_pin(pin_file: str | None, lab_dir: str | None = None, *,
             so: bool = False) -> str | None:
    """The user (or SO) PIN from a source that needs no prompt: the file given,
    the environment, the lab's PIN file; None when there is none."""
    env = SO_PIN_ENV if so else PIN_ENV
    if pin_file:
        return read_pin_file(pin_file)
    if os.environ.get(env):
        return os.environ[env]
    lab_file = lab_pin_file(lab_dir, so)
    return read_pin_file(lab_file) if lab_file is not None else None


def resolve_pin(pin_file: str | None, lab_dir: str | None = None, *, so: bool = False) -> str:
    """The user (or SO) PIN: :func:`find_pin`, else a hidden prompt on a terminal."""
    pin = find_pin(pin_file, lab_dir, so=so)
    if pin is not None:
        return pin
    if not sys.stdin.isatty():
        env, flag = (SO_PIN_ENV, "--so-pin-file") if so else (PIN_ENV, "--pin-file")
        raise UsageError(f"no {'SO ' if so else ''}PIN: give {flag} FILE or set {env}")
    return str(click.prompt("Enter SO PIN" if so else "Enter PIN", hide_input=True))
