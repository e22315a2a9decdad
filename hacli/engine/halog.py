"""The HA log: ``<haLogPath>/haErrorLog.txt``, one line per event.

Format (BRIEF section 3)::

    <ISO-8601 time> <group label> <member serial> <event> <CKR name or ->

With ``haLogFormat = json`` (hacli's section) each line is instead one JSON
object: ``time`` (ISO-8601, UTC), ``group``, ``member``, ``event``, ``ckr``
(null when none) and ``reason`` (the event in words, and the CKR code's
explanation from :mod:`hacli.engine.ckr`).  Same events, same once-only rules,
same file and rotation: only the line's form changes.

Past ``logLen`` bytes the file is renamed with a timestamp
(``haErrorLog.txt.20240101T120000``) and a new one is started.  Never contains
a PIN: it only ever receives labels, serials, event names and CKR names.

**Each event once, across processes.**  Every process that runs an engine
(each ``hacli ha status``, the menu, an application) notices a dead member for
itself.  ``failed`` and ``recovered`` are state changes of the member, so the
log keeps each member's last logged state in ``.haErrorLog.state`` next to the
log and skips a ``failed`` for a member it already logged down, and a
``recovered`` for one already logged back.  A process that finds a member in
service which the log last saw fail logs ``recovered`` (:meth:`HALog.seen_up`):
it came back while no engine was watching.  The other events are each a new
fact (another recovery attempt, a member added) and are always written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from hacli.conf.model_types import HASettings
from hacli.engine.ckr import explain

LOG_NAME = "haErrorLog.txt"
#: Each member's last logged state (``down``/``up``), next to the log.
STATE_NAME = ".haErrorLog.state"

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
#: A multi-part operation of a member that failed was replayed on another
#: member from its journal (the member field is the one that failed).
MULTIPART_REPLAYED = "multipart-replayed"
#: ... could not be: its input had passed ``MultipartJournalBytes``.
MULTIPART_JOURNAL_FULL = "multipart-journal-full"
#: ... could not be: no member could take it over (or they kept failing).
MULTIPART_REPLAY_FAILED = "multipart-replay-failed"
#: ... could not be: the member taking over produced other output (encrypt,
#: decrypt) than the application had already received.
MULTIPART_REPLAY_MISMATCH = "multipart-replay-mismatch"

EVENTS = (FAILED, RECOVERY_FAILED, RECOVERED, ADDED, REMOVED, SYNCHRONIZED,
          STANDBY_PROMOTED, STANDBY_DEMOTED, GAVE_UP, MULTIPART_REPLAYED,
          MULTIPART_JOURNAL_FULL, MULTIPART_REPLAY_FAILED, MULTIPART_REPLAY_MISMATCH)

#: What each event means, for the ``reason`` field of the JSON format.
REASONS = {
    FAILED: "member marked down",
    RECOVERY_FAILED: "recovery attempt failed",
    RECOVERED: "member back in service",
    ADDED: "member added to the group",
    REMOVED: "member removed from the group",
    SYNCHRONIZED: "member synchronised",
    STANDBY_PROMOTED: "standby member serves: no active member left",
    STANDBY_DEMOTED: "standby member back in reserve: an active member serves",
    GAVE_UP: "automatic recovery attempts used up",
}

#: ``haLogFormat`` values.
TEXT, JSON = "text", "json"
FORMATS = (TEXT, JSON)

#: Events that are a member's change of state: not logged twice in a row.
DOWN, UP = "down", "up"
STATE_EVENTS = {FAILED: DOWN, RECOVERED: UP}


def _field(value: str | None) -> str:
    """One whitespace-free field ("-" when empty) so lines split on blanks."""
    if not value:
        return "-"
    return "_".join(str(value).split())


class HALog:
    """Appends HA events to ``<directory>/haErrorLog.txt`` with size rotation.

    Thread-safe within a process; every line is written with one ``write`` on a
    file opened in append mode, so concurrent processes interleave whole lines.
    A member's state events (``failed``, ``recovered``) are written under a
    lock on the state file, so that of two processes noticing the same failure
    only one logs it.
    """

    def __init__(self, directory: str | os.PathLike[str], log_len: int = 100_000_000,
                 fmt: str = TEXT):
        if fmt not in FORMATS:
            raise ValueError(f"unknown HA log format {fmt!r}")
        self.format = fmt
        self.directory = Path(directory)
        self.path = self.directory / LOG_NAME
        self.state_path = self.directory / STATE_NAME
        self.log_len = int(log_len)
        self._lock = threading.Lock()

    def event(self, group: str, member: str | None, event: str, ckr: str | None = None) -> str:
        """Write one event line and return it (without the newline); "" when it
        is a member's state it is already logged in (see the module docstring)."""
        if event not in EVENTS:
            raise ValueError(f"unknown HA log event {event!r}")
        line = self._line(group, member, event, ckr)
        state = STATE_EVENTS.get(event)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if member is None or (state is None and event != REMOVED):
                self._append(line)
                return line
            with self._states() as states:
                key = _state_key(group, member)
                if state is not None and states.get(key) == state:
                    return ""
                self._append(line)
                if state is None:
                    states.pop(key, None)  # removed from the group: no state to keep
                else:
                    states[key] = state
        return line

    def seen_up(self, group: str, member: str) -> str:
        """A member was found in service (connected, not recovered by this
        engine): ``recovered`` when the log last saw it fail, else nothing."""
        with self._lock:
            if not self.state_path.exists():
                return ""  # nothing ever logged down: no lock, no file
            with self._states() as states:
                key = _state_key(group, member)
                if states.get(key) != DOWN:
                    return ""
                line = self._line(group, member, RECOVERED, None)
                self._append(line)
                states[key] = UP
        return line

    def _line(self, group: str, member: str | None, event: str, ckr: str | None) -> str:
        if self.format == JSON:
            now = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
            reason = REASONS[event] + (f": {ckr}: {explain(ckr)}" if ckr else "")
            return json.dumps({"time": now.replace("+00:00", "Z"), "group": group,
                               "member": member, "event": event, "ckr": ckr or None,
                               "reason": reason})
        now = _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")
        return f"{now} {_field(group)} {_field(member)} {event} {_field(ckr)}"

    def _append(self, line: str) -> None:
        # self._lock held
        data = (line + "\n").encode("utf-8")
        self._rotate_if_needed(len(data))
        with open(self.path, "ab") as f:
            f.write(data)

    @contextlib.contextmanager
    def _states(self) -> Iterator[dict[str, str]]:
        """The members' last logged states, locked against other processes for
        the block and written back if it changed them.  A damaged file counts
        as empty: at worst one state event is logged twice; one that cannot be
        opened (another user's, read-only) keeps no state: every event is written."""
        try:
            fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield {}
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = b""
            while chunk := os.read(fd, 65536):
                raw += chunk
            try:
                loaded = json.loads(raw) if raw else {}
            except ValueError:
                loaded = {}
            states: dict[str, str] = loaded if isinstance(loaded, dict) else {}
            before = dict(states)
            yield states
            if states != before:
                data = json.dumps(states, indent=0, sort_keys=True).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, data)
        finally:
            os.close(fd)  # releases the lock

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


def _state_key(group: str, member: str) -> str:
    return f"{_field(group)} {_field(member)}"


def open_log(settings: HASettings) -> HALog | NullLog:
    """The HA log the settings ask for (``haLogStatus``, ``haLogPath``,
    ``logLen``, ``haLogFormat``), or a :class:`NullLog` when it is off."""
    if settings.ha_log_enabled and settings.ha_log_path:
        return HALog(settings.ha_log_path, settings.log_len, settings.ha_log_format)
    return NullLog()


class NullLog:
    """Stand-in when the HA log is disabled."""

    path = None

    def event(self, group: str, member: str | None, event: str, ckr: str | None = None) -> str:
        return ""

    def seen_up(self, group: str, member: str) -> str:
        return ""


__all__ = ["EVENTS", "FORMATS", "LOG_NAME", "REASONS", "STATE_NAME", "HALog", "NullLog",
           "open_log"]
