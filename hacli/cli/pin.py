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


def pin_file_option(f):  # type: ignore[no-untyped-def]
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


def lab_pin_file(lab_dir: str | None) -> Path | None:
    """The lab's PIN file when the configuration was written by ``hacli lab up``."""
    if not lab_dir:
        return None
    from hacli.lab import Lab

    path = Lab(Path(lab_dir)).pin_file
    return path if path.exists() else None


def resolve_pin(pin_file: str | None, lab_dir: str | None = None,
                prompt: str = "Enter PIN") -> str:
    """The user PIN, from the first source that has one."""
    if pin_file:
        return read_pin_file(pin_file)
    if os.environ.get(PIN_ENV):
        return os.environ[PIN_ENV]
    lab_file = lab_pin_file(lab_dir)
    if lab_file is not None:
        return read_pin_file(lab_file)
    if not sys.stdin.isatty():
        raise UsageError(f"no PIN: give --pin-file FILE or set {PIN_ENV}")
    return str(click.prompt(prompt, hide_input=True))
