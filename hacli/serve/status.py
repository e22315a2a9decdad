"""``PATH.status``: the status socket of ``hacli serve``, for watchers.

JSON lines (the messages of :mod:`hacli.metrics.watch`): a snapshot when a
watcher connects, a change line per member state change, a snapshot for every
line the watcher writes.  Owner only (0600, whatever ``--allow-uid`` says): it
tells who serves what.  Read by ``hacli ha status --watch --socket``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hacli.metrics.watch import Message, change, snapshot
from hacli.serve.server import bind_owner_only

if TYPE_CHECKING:
    from hacli.engine import Engine
    from hacli.engine.members import StateChange


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
        # the listener writes under a group's lock: a full pipe must not block it
        # (the thread reads every queued change at the next wake-up anyway)
        os.set_blocking(self._wake_w, False)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        """Create the socket (mode 0600) and serve watchers in a thread."""
        sock = bind_owner_only(self.path)
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


__all__ = ["StatusServer", "status_path"]
