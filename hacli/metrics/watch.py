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
socket (:class:`StatusServer`, ``PATH.status``), which writes a snapshot when
a watcher connects, a change line per state change, and a snapshot for every
line the watcher writes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacli.engine.member import MemberState
from hacli.errors import HacliError, UsageError

if TYPE_CHECKING:
    from hacli.engine import Engine
    from hacli.engine.members import StateChange
    from hacli.engine.stats import MemberMetrics
    from hacli.engine.types import RecoveryState

LOG = logging.getLogger("hacli.serve")

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


# -- the status socket of hacli serve ---------------------------------------------------
def status_path(main: Path) -> Path:
    """The status socket next to the main one: ``PATH.status``."""
    return main.with_name(main.name + ".status")


class StatusServer:
    """``PATH.status``: a snapshot on connect, a line per state change, a
    snapshot per line received.  Owner only (0600): it tells who serves what.

    One thread accepts and serves every watcher (a selector over them); state
    changes arrive through the engine's change listener into a queue and wake
    it through a pipe.
    """

    def __init__(self, engine: Engine, path: Path) -> None:
        self._engine = engine
        self.path = path
        self._changes: queue.SimpleQueue[StateChange] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Create the socket (mode 0600) and serve watchers in a thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        except OSError as e:
            sock.close()
            raise HacliError(f"cannot create the status socket {self.path}: "
                             f"{e.strerror or e}") from e
        finally:
            os.umask(old)
        sock.listen(16)
        self._sock = sock
        self._engine.on_change(self._changed)
        self._thread = threading.Thread(target=self._serve, name="hacli-status", daemon=True)
        self._thread.start()

    def _changed(self, c: StateChange) -> None:
        self._changes.put(c)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Close every watcher and the socket, remove the file."""
        self._engine.remove_change_listener(self._changed)
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _serve(self) -> None:
        assert self._sock is not None
        sel = selectors.DefaultSelector()
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        watchers: set[socket.socket] = set()

        def send(w: socket.socket, msg: Message) -> None:
            try:
                w.sendall(json.dumps(msg).encode() + b"\n")
            except OSError:
                drop(w)

        def drop(w: socket.socket) -> None:
            if w in watchers:
                watchers.discard(w)
                sel.unregister(w)
                w.close()

        try:
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._sock:
                        w, _addr = self._sock.accept()
                        w.settimeout(5.0)  # a watcher that does not read is dropped
                        watchers.add(w)
                        sel.register(w, selectors.EVENT_READ)
                        send(w, snapshot(self._engine, time.time()))
                    elif key.fileobj == self._wake_r:
                        os.read(self._wake_r, 4096)
                        while True:
                            try:
                                msg = change(self._engine, self._changes.get_nowait())
                            except queue.Empty:
                                break
                            for w in list(watchers):
                                send(w, msg)
                    else:
                        w = key.fileobj  # type: ignore[assignment]
                        try:
                            data = w.recv(4096)
                        except OSError:
                            data = b""
                        if not data:
                            drop(w)
                        elif b"\n" in data:
                            send(w, snapshot(self._engine, time.time()))
        finally:
            for w in list(watchers):
                drop(w)
            sel.close()
            self._sock.close()


__all__ = ["CHANGE", "END", "SNAPSHOT", "EngineFeed", "Message", "SocketFeed",
           "StatusServer", "change", "epoch", "initial_changes", "iso", "snapshot",
           "status_path"]
