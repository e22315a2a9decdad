"""Where everything of a lab lives in its directory (see the tree in ``docs/lab.md``).

:class:`~hacli.lab.lab.Lab` is a :class:`LabPaths`, so these are its public
path properties; the modules that write files or run servers take a
:class:`LabPaths` rather than a whole Lab.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hacli.lab.model import MAX_MEMBERS, LabMember, LabUsageError

SOCKET_NAME = "p11kit.sock"
#: sun_path is 108 bytes on Linux, including the terminating NUL.
_UNIX_PATH_MAX = 107
#: Characters that would break a value in Chrystoki.conf (``;`` ends a value,
#: ``,`` separates ``MemberNNEnvironment`` entries, ``#`` starts a comment).
_BAD_PATH_CHARS = set(";,#{}\n\r\t")


class LabPaths:
    """The paths of a lab in *directory* (made absolute; nothing is touched)."""

    #: Entries of a lab directory (purge removes these when it did not create DIR);
    #: ``softhsm2.conf`` and ``tokens`` are an older lab's (one token directory
    #: for every member), kept here so that purging such a lab removes them too.
    OWN_NAMES = (
        "lab.json",
        "Chrystoki.conf",
        "softhsm2.conf",
        "pin",
        "so-pin",
        "tokens",
        "log",
    )

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory).expanduser().absolute()

    @property
    def conf_path(self) -> Path:
        """The lab's ``Chrystoki.conf`` (its HA group and hacli section)."""
        return self.directory / "Chrystoki.conf"

    @property
    def softhsm2_conf(self) -> Path:
        """member0's SoftHSM2 configuration (:meth:`softhsm2_conf_of` ``(0)``).

        Each member has its own token directory and configuration; this one
        opens member0's token only.  It is what ``softhsm2_conf`` at the top of
        ``lab status --json`` names, for tools written when one file opened
        every member: use :meth:`softhsm2_conf_of` (or
        :attr:`LabMember.softhsm2_conf`) for the others.
        """
        return self.softhsm2_conf_of(0)

    def softhsm2_conf_of(self, index: int) -> Path:
        """Member *index*'s SoftHSM2 configuration: its own token directory only."""
        return self.member_dir(index) / "softhsm2.conf"

    def tokens_dir_of(self, index: int) -> Path:
        """Member *index*'s SoftHSM2 token directory (its one token, nobody else's).

        Never shared: a frozen member keeps the file locks its SoftHSM2 held,
        and a SoftHSM2 that scanned that member's token at ``C_Initialize``
        would wait for them (``docs/lab.md``, "Why one token directory per member").
        """
        return self.member_dir(index) / "tokens"

    @property
    def shared_softhsm2_conf(self) -> Path:
        """An older lab's one SoftHSM2 configuration (every member's token); gone after ``up``."""
        return self.directory / "softhsm2.conf"

    @property
    def shared_tokens_dir(self) -> Path:
        """An older lab's one token directory (every member's token); gone after ``up``."""
        return self.directory / "tokens"

    @property
    def pin_file(self) -> Path:
        """The user PIN of every member token (mode 0600, no trailing newline)."""
        return self.directory / "pin"

    @property
    def so_pin_file(self) -> Path:
        """The Security Officer PIN of every member token (mode 0600)."""
        return self.directory / "so-pin"

    @property
    def state_file(self) -> Path:
        """``lab.json``: members, serials, pids.  Never holds a PIN."""
        return self.directory / "lab.json"

    @property
    def lock_file(self) -> Path:
        return self.directory / "lab.lock"

    @property
    def log_dir(self) -> Path:
        """``haLogPath`` of the lab group (the HA log goes here)."""
        return self.directory / "log"

    def member_dir(self, index: int) -> Path:
        return self.directory / f"m{index}"

    def member_of(self, rec: dict[str, Any]) -> LabMember:
        """The member a ``lab.json`` member record describes, with its socket and SoftHSM2 paths."""
        return LabMember(
            index=rec["index"],
            label=rec["label"],
            serial=rec["serial"],
            socket=self.member_dir(rec["index"]) / SOCKET_NAME,
            softhsm2_conf=self.softhsm2_conf_of(rec["index"]),
        )

    def own_entries(self) -> list[Path]:
        """The lab's files and member directories that exist in the directory."""
        found = [self.directory / n for n in self.OWN_NAMES if (self.directory / n).exists()]
        found += sorted(p for p in self.directory.glob("m*") if p.is_dir() and p.name[1:].isdigit())
        return found

    def check_path(self) -> None:
        """LabUsageError unless Chrystoki.conf and every member's socket can hold the path."""
        bad = _BAD_PATH_CHARS & set(str(self.directory))
        if bad:
            raise LabUsageError(
                f"lab directory {self.directory} contains {''.join(sorted(bad))!r}, "
                "which Chrystoki.conf cannot hold"
            )
        longest = self.member_dir(MAX_MEMBERS - 1) / SOCKET_NAME
        if len(os.fsencode(longest)) > _UNIX_PATH_MAX:
            raise LabUsageError(
                f"lab directory {self.directory} is too long for a unix socket path "
                f"(at most {_UNIX_PATH_MAX - len(b'/m15/' + SOCKET_NAME.encode())} bytes)"
            )
