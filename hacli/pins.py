"""Where a PIN comes from: the one reader every part of hacli uses (CLI, menu, lab).

A PIN is found in the sources of :data:`SOURCES`, in that order: the file the
user named (``--pin-file``/``--so-pin-file``), the environment (``HACLI_PIN``,
``HACLI_SO_PIN``), the lab's PIN file (``DIR/pin``, ``DIR/so-pin``) when the
configuration is a lab's.  :func:`find_pin` walks that table; a caller that may
use only some sources (the lab reads only its own file) names them.  Asking
for a PIN at a prompt is the caller's business (the CLI's hidden prompt, the
menu's): nothing here talks to a terminal, and nothing imports click.

A PIN file is read as ssh reads a private key: one that others than its owner
may read or change gets a warning on stderr (naming the file, never the PIN),
and an empty one is refused (:class:`PinFileError`) before any login is tried,
because every failed login counts towards a lockout on a real HSM.  A PIN is
never printed, logged or written anywhere by hacli.
"""

from __future__ import annotations

import enum
import os
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hacli.errors import UsageError


class Role(enum.Enum):
    """Whose PIN: the user's (Crypto Officer) or the Security Officer's.

    The value is ``(what it is called, its environment variable, its option)``.
    """

    USER = ("PIN", "HACLI_PIN", "--pin-file")
    SO = ("SO PIN", "HACLI_SO_PIN", "--so-pin-file")

    @property
    def what(self) -> str:
        return self.value[0]

    @property
    def env(self) -> str:
        return self.value[1]

    @property
    def option(self) -> str:
        return self.value[2]


class Source(enum.Enum):
    """The kinds of place a PIN comes from (see :data:`SOURCES` for their order)."""

    FILE = "file"
    ENVIRONMENT = "environment"
    LAB = "lab"


class PinFileError(UsageError):
    """A PIN file that cannot give a PIN (missing, unreadable, empty): nothing was tried."""


@dataclass(frozen=True)
class FoundPin:
    """A PIN and where it came from (``source`` is safe to print; ``pin`` never is)."""

    pin: str = field(repr=False)
    source: str


@dataclass(frozen=True)
class PinRequest:
    """What to look for: whose PIN, and the places the caller knows of."""

    role: Role = Role.USER
    #: ``--pin-file`` / ``--so-pin-file`` as given.
    pin_file: str | os.PathLike[str] | None = None
    #: The lab's directory (``LabDir`` of the configuration), if it is a lab's.
    lab_dir: str | os.PathLike[str] | None = None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)


#: Files already warned about in this process: one warning line per file, however
#: often the file is read (the menu reads it at every login).
_warned: set[str] = set()


def _warn(text: str) -> None:
    sys.stderr.write(f"Warning: {text}\n")
    sys.stderr.flush()


def check_permissions(path: Path, what: str = "PIN",
                      warn: Callable[[str], None] = _warn) -> None:
    """Warn (once per file) when others than its owner may read or change *path*.

    ssh's rule for private keys (any group or other permission bit); unlike
    ssh the file is still used, since the PIN may already be in use elsewhere.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reading it says what is wrong
    key = str(path.absolute())
    if mode & 0o077 and key not in _warned:
        _warned.add(key)
        warn(f"{what} file {path} has mode {mode:04o}: others than its owner can read or "
             f"change it (chmod 600 {path})")


def read_pin_file(path: str | os.PathLike[str], role: Role = Role.USER) -> str:
    """The PIN in *path*: its first line, stripped.

    Warns when the file is open to group or others (:func:`check_permissions`);
    :class:`PinFileError` when it is missing, unreadable or empty.
    """
    path = Path(path)
    check_permissions(path, role.what)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PinFileError(f"cannot read a {role.what} from {path}: "
                           f"{e.strerror or e}") from None
    except UnicodeDecodeError:
        raise PinFileError(f"cannot read a {role.what} from {path}: not UTF-8 text") from None
    lines = text.splitlines()
    pin = lines[0].strip() if lines else ""
    if not pin:
        raise PinFileError(f"the {role.what} file {path} is empty; no login was tried")
    return pin


def lab_pin_path(lab_dir: str | os.PathLike[str], role: Role = Role.USER) -> Path:
    """The lab's PIN file for *role* (``DIR/pin`` or ``DIR/so-pin``)."""
    from hacli.lab.paths import LabPaths  # here: hacli.lab imports this module

    paths = LabPaths(lab_dir)
    return paths.so_pin_file if role is Role.SO else paths.pin_file


def _from_file(request: PinRequest) -> FoundPin | None:
    if request.pin_file is None or str(request.pin_file) == "":
        return None
    return FoundPin(read_pin_file(request.pin_file, request.role),
                    f"{request.role.option} {request.pin_file}")


def _from_environment(request: PinRequest) -> FoundPin | None:
    value = request.environ.get(request.role.env)
    return FoundPin(value, request.role.env) if value else None


def _from_lab(request: PinRequest) -> FoundPin | None:
    if not request.lab_dir:
        return None
    path = lab_pin_path(request.lab_dir, request.role)
    if not path.exists():
        return None
    return FoundPin(read_pin_file(path, request.role), f"the lab's {request.role.what} file {path}")


#: Where a PIN comes from, in the order tried: the first source that gives one wins.
SOURCES: tuple[tuple[Source, Callable[[PinRequest], FoundPin | None]], ...] = (
    (Source.FILE, _from_file),
    (Source.ENVIRONMENT, _from_environment),
    (Source.LAB, _from_lab),
)


def find_pin(request: PinRequest, sources: Iterable[Source] = tuple(Source)) -> FoundPin | None:
    """The PIN of the first of *sources* (in :data:`SOURCES` order) that gives one.

    None when none does; :class:`PinFileError` when a file that should give
    one cannot (a named file that is missing or empty is an error, not a
    reason to look further).
    """
    wanted = set(sources)
    for source, read in SOURCES:
        if source in wanted:
            found = read(request)
            if found is not None:
                return found
    return None


__all__ = ["SOURCES", "FoundPin", "PinFileError", "PinRequest", "Role", "Source",
           "check_permissions", "find_pin", "lab_pin_path", "read_pin_file"]
