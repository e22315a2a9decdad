"""What ``ha status --watch`` shows, as JSON-able dicts, and where it comes from.

Two kinds of message, both one JSON object (one line on the status socket):

* a **snapshot** -- ``{"type": "snapshot", "time": ..., "groups": [{"label",
  "serial", "members": [...]}]}``, every member with its ``state``, ``alive``,
  ``in_flight``, ``calls`` and ``errors`` (totals since the engine started),
  ``failures``, ``recoveries``, ``failovers``, ``gave_ups``, ``since`` (when it
  entered its state), ``last_failure``, ``last_error`` and, while it is down,
  ``attempts_used``, ``attempts_left`` (null: unlimited) and ``next_attempt``
  (null: none will be made);
* a **change** -- ``{"type": "change", "time", "group", "member", "from",
  "to", "reason", "attempts_used", "attempts_left", "next_attempt"}``, one per
  member state change (``alive``, ``down``, ``recovering``, ``synchronising``).

Times are ISO-8601 UTC strings.  No PIN is in either: only labels, serials,
states, counts, times and CKR names.

A *feed* hands messages to the watcher: :class:`EngineFeed` from an engine in
this process, :class:`SocketFeed` from a running ``hacli serve``'s status
socket (:class:`hacli.serve.status.StatusServer`, ``PATH.status``), which writes a snapshot when
a watcher connects, a change line per state change, and a snapshot for every
line the watcher writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from hacli.engine.member import MemberState
from hacli.errors import HacliError, UsageError

if TYPE_CHECKING:
    from hacli.engine import Engine
    from hacli.engine.members import StateChange
    from hacli.engine.stats import MemberMetrics
    from hacli.engine.types import RecoveryState


#: JSON message dict.
Message = dict[str, Any]

SNAPSHOT, CHANGE = "snapshot", "change"
#: A feed's last message: the server went away.
END = "end"


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO-8601 UTC string (milliseconds), None stays None."""
    if epoch is None:
        return None
    when = _dt.datetime.fromtimestamp(epoch, _dt.UTC).isoformat(timespec="milliseconds")
    return when.replace("+00:00", "Z")


def epoch(text: str | None) -> float | None:
    """The inverse of :func:`iso`."""
    return None if text is None else _dt.datetime.fromisoformat(text).timestamp()


def _recovery(rs: RecoveryState | None) -> Message:
    if rs is None:
        return {"attempts_used": None, "attempts_left": None, "next_attempt": None}
    return {"attempts_used": rs.attempts_used, "attempts_left": rs.attempts_left,
            "next_attempt": iso(rs.next_attempt)}


def _member(mm: MemberMetrics, last_error: str | None, rs: RecoveryState | None) -> Message:
    return {"serial": mm.serial, "state": mm.state, "alive": mm.alive,
            "in_flight": mm.in_flight, "calls": mm.total_calls, "errors": mm.total_errors,
            "failures": mm.failures, "recoveries": mm.recoveries, "failovers": mm.failovers,
            "gave_ups": mm.gave_ups, "since": iso(mm.state_changed),
            "last_failure": iso(mm.last_failure), "last_error": last_error,
            **_recovery(rs)}


def snapshot(engine: Engine, now: float) -> Message:
    """Every group's members now (no probe: what the engine knows)."""
    groups = []
    for g in engine.groups:
        with g.members_set.lock:
            errors = {m.serial: m.last_error for m in g.members}
        members = [_member(mm, errors[mm.serial], g.recovery_state(mm.serial))
                   for mm in g.metrics()]
        groups.append({"label": g.label, "serial": g.serial, "members": members})
    return {"type": SNAPSHOT, "time": iso(now), "groups": groups}


def change(engine: Engine, c: StateChange) -> Message:
    """The message of one state change."""
    rs = None if c.new is MemberState.ALIVE else engine.group(c.group).recovery_state(c.serial)
    return {"type": CHANGE, "time": iso(c.time), "group": c.group, "member": c.serial,
            "from": c.old.value, "to": c.new.value, "reason": c.reason, **_recovery(rs)}


def initial_changes(snap: Message) -> list[Message]:
    """A snapshot as one change per member (``from`` null): where a line
    stream starts."""
    return [{"type": CHANGE, "time": snap["time"], "group": g["label"], "member": m["serial"],
             "from": None, "to": m["state"], "reason": m["last_error"],
             "attempts_used": m["attempts_used"], "attempts_left": m["attempts_left"],
             "next_attempt": m["next_attempt"]}
            for g in snap["groups"] for m in g["members"]]


# -- feeds -----------------------------------------------------------------------------
class EngineFeed:
    """Messages from an engine in this process.  :meth:`refresh` probes the
    members (so a dead one is noticed and the recovery policy runs), then
    queues a snapshot."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._pending: queue.SimpleQueue[StateChange] = queue.SimpleQueue()
        engine.on_change(self._pending.put)

    def refresh(self) -> None:
        self._engine.status(probe=True)
        self._drain()
        self._queue.put(snapshot(self._engine, time.time()))

    def _drain(self) -> None:
        # changes are turned into messages here, not in the listener: it may
        # run with a group's lock held
        while True:
            try:
                c = self._pending.get_nowait()
            except queue.Empty:
                return
            self._queue.put(change(self._engine, c))

    def next(self, timeout: float) -> Message | None:
        """The next message, or None after ``timeout`` seconds."""
        self._drain()
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            self._drain()
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                return None

    def close(self) -> None:
        self._engine.remove_change_listener(self._pending.put)


class SocketFeed:
    """Messages from a ``hacli serve`` status socket."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(os.fspath(path))
        except OSError as e:
            self._sock.close()
            if isinstance(e, FileNotFoundError):
                raise UsageError(f"--socket: {path} does not exist") from e
            raise HacliError(f"--socket: cannot connect to {path}: {e.strerror or e}") from e
        self._file = self._sock.makefile("rb")
        self._queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="hacli-watch", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for line in self._file:
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    if isinstance(msg, dict):
                        self._queue.put(msg)
        except OSError:
            pass
        self._queue.put({"type": END})

    def refresh(self) -> None:
        with contextlib.suppress(OSError):  # gone: the reader reports the end
            self._sock.sendall(b"\n")

    def next(self, timeout: float) -> Message | None:
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


__all__ = ["CHANGE", "END", "SNAPSHOT", "EngineFeed", "Message", "SocketFeed", "change",
           "epoch", "initial_changes", "iso", "snapshot"]
