"""The HA log: ``<haLogPath>/haErrorLog.txt``, one line per event.

Format (BRIEF section 3)::

    <ISO-8601 time> <group label> <member serial> <event> <CKR name or ->

Past ``logLen`` bytes the file is renamed with a timestamp
(``haErrorLog.txt.20240101T120000``) and a new one is started.  Never contains
a PIN: it only ever receives labels, serials, event names and CKR names.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
from pathlib import Path

LOG_NAME = "haErrorLog.txt"

FAILED = "failed"
RECOVERY_FAILED = "recovery-failed"
RECOVERED = "recovered"
ADDED = "added"
REMOVED = "removed"
SYNCHRONIZED = "synchronized"
STANDBY_PROMOTED = "standby-promoted"
STANDBY_DEMOTED = "standby-demoted"
#: A member's automatic recovery attempts (``reconnAtt``) are used up: nothing
#: but an administrator's ``hagroup recover`` brings it back now.
GAVE_UP = "gave-up"

EVENTS = (FAILED, RECOVERY_FAILED, RECOVERED, ADDED, REMOVED, SYNCHRONIZED,
          STANDBY_PROMOTED, STANDBY_DEMOTED, GAVE_UP)


def _field(value: str | None) -> str:
    """One whitespace-free field ("-" when empty) so lines split on blanks."""
    if not value:
        return "-"
    return "_".join(str(value).split())


class HALog:
    """Appends HA events to ``<directory>/haErrorLog.txt`` with size rotation.

    Thread-safe within a process; every line is written with one ``write`` on a
    file opened in append mode, so concurrent processes interleave whole lines.
    """

    def __init__(self, directory: str | os.PathLike[str], log_len: int = 100_000_000):
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self.log_len = int(log_len)
        self._lock = threading.Lock()

    def event(self, group: str, member: str | None, event: str, ckr: str | None = None) -> str:
        """Write one event line and return it (without the newline)."""
        if event not in EVENTS:
            raise ValueError(f"unknown HA log event {event!r}")
        now = _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
        line = f"{now} {_field(group)} {_field(member)} {event} {_field(ckr)}"
        data = (line + "\n").encode("utf-8")
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._rotate_if_needed(len(data))
            with open(self.path, "ab") as f:
                f.write(data)
        return line

    def _rotate_if_needed(self, incoming: int) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size == 0 or size + incoming <= self.log_len:
            return
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{LOG_NAME}.{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{LOG_NAME}.{stamp}.{n}")
            n += 1
        # another process may have rotated it first
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, target)


class NullLog:
    """Stand-in when the HA log is disabled."""

    path = None

    def event(self, group: str, member: str | None, event: str, ckr: str | None = None) -> str:
        return ""


__all__ = ["EVENTS", "LOG_NAME", "HALog", "NullLog"]
