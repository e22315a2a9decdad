"""Exception hierarchy and exit statuses shared by every layer.

The library layers (``conf``, ``engine``, ``lab``) raise these; the CLI maps
them to one ``Error: ...`` line and an :class:`ExitStatus` in one table
(:mod:`hacli.cli.errors`).  Nothing here imports click or rich.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes, the same for every command (see the README)."""

    OK = 0
    FAILED = 1  # the operation failed
    USAGE = 2  # usage error or invalid value: nothing was changed
    DEGRADED = 3  # `ha status` / `lab status` only: a member is down (lab: not running)
    GROUP_DOWN = 4  # `ha status` only: no member serves
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as shells report it


class HacliError(Exception):
    """Base class of every error hacli reports to a user."""


class UsageError(HacliError):
    """The request itself is wrong (bad value, unknown group); nothing changed."""


class ConfError(HacliError):
    """A configuration file problem (base class)."""


class ConfParseError(ConfError):
    """A file that cannot be parsed; it is never modified.

    Carries the path and the 1-based line number of the offending line.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.path = path
        self.line = line
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{message}")


class ConfValueError(ConfError, UsageError):
    """A value outside what the configspec allows, refused before it is written."""


class ConfFileError(ConfError):
    """A configuration file that breaks a rule of :mod:`hacli.conf.check`, found
    while reading it (exit 1, like a file that cannot be parsed)."""


class ConfNotFoundError(ConfError):
    """No configuration file was found by discovery."""


class ConfIOError(ConfError):
    """A file that cannot be read or written (permissions, missing directory)."""


class LabError(HacliError):
    """The lab could not do what was asked (missing binaries, dead processes)."""


class EngineError(HacliError):
    """The HA engine failed an operation (all members down, ...)."""
