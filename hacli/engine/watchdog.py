"""One thread per engine that frees calls stuck in a member past their deadline.

Calls into a member whose transport hacli can cut (``p11-kit-client.so``) run
on the caller's own thread (see :mod:`hacli.engine.module`).  A frozen member
would then hold that thread forever, so each such call publishes its deadline
on its module instance, and the watchdog looks at every watched instance
every :data:`PERIOD` seconds: an instance whose running call is past its
deadline is abandoned and its transport cut, so the stuck call returns at
once (``CKR_DEVICE_ERROR`` from the client library).  A caller is held at most
the command timeout plus one period plus the cut (well under 0.1 s).

Polling, not a timer per call: a call then costs two attribute writes and no
allocation, and the watchdog's 50 wake-ups a second cost a few µs each.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

#: Seconds between two looks at the watched instances.
PERIOD = 0.02


class Watched(Protocol):
    """What the watchdog needs of a module instance."""

    def check_deadline(self, now: float) -> None:
        """Abandon the running call (and cut its transport) if ``now`` is past its deadline."""


class Watchdog:
    """Checks the deadlines of its instances' running calls, on one daemon thread.

    The thread starts with the first :meth:`watch` and ends in :meth:`close`
    (no thread outlives the engine that owns the watchdog).
    """

    def __init__(self, name: str = "hacli-watchdog", period: float = PERIOD):
        self.name = name
        self.period = period
        self._watched: tuple[Watched, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Watchdog {self.name} {len(self._watched)} watched>"

    def watch(self, instance: Watched) -> None:
        """Watch ``instance`` until :meth:`unwatch` (starts the thread on first use)."""
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("watchdog closed")
            # copy on write: the thread iterates a tuple without taking the lock
            self._watched = (*self._watched, instance)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def unwatch(self, instance: Watched) -> None:
        with self._lock:
            self._watched = tuple(w for w in self._watched if w is not instance)

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            now = time.monotonic()
            for instance in self._watched:
                instance.check_deadline(now)

    def close(self, timeout: float = 2.0) -> None:
        """Stop watching: the thread ends (joined at most ``timeout`` s)."""
        with self._lock:
            self._stop.set()
            thread, self._watched = self._thread, ()
        if thread is not None:
            thread.join(timeout)


__all__ = ["PERIOD", "Watchdog", "Watched"]
