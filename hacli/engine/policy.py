"""The auto-recovery policy of the origin document, as a small pure class.

The origin pseudo-code, run inside every PKCS#11 call made through a group::

    if (disconnected_member > 0 and recover_attempt_count < N
            and time_now - last_recover_attempt > X) then
        perform auto recovery                    # of ONE member
        set last_recover_attempt equal to time_now
        if (recovery failed) then increment recover_attempt_count by 1
        else decrement disconnected_member by 1; reset recover_attempt_count to 0

Decisions (BRIEF section 2): N = -1 retries forever, N = 0 never tries;
``last_recover_attempt`` is set when a member is marked disconnected, so the
first attempt comes X seconds after the failure; the member down longest is the
one tried.  The clock is injectable so tests run against fake time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping

Clock = Callable[[], float]


class RecoveryPolicy:
    """Decides when to attempt recovery and of which member.

    The class does no I/O; the engine asks :meth:`due` and reports the outcome
    with :meth:`record`.  Thread-safe.

    :param max_attempts: N (``reconnAtt``): -1 forever, 0 never, else the limit.
    :param interval: X (``AutoReconnectInterval``) in seconds.
    :param clock: monotonic clock in seconds (``time.monotonic`` by default).
    """

    def __init__(self, max_attempts: int = -1, interval: float = 60.0,
                 clock: Clock = time.monotonic):
        self.max_attempts = int(max_attempts)
        self.interval = float(interval)
        self.clock = clock
        self.attempts = 0
        self.last_attempt: float | None = None
        self._down: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    # -- members going down / coming back ---------------------------------
    def member_down(self, member: Hashable, now: float | None = None) -> None:
        """A member was marked disconnected: remember since when; restart the X timer."""
        now = self.clock() if now is None else now
        with self._lock:
            self._down.setdefault(member, now)
            self.last_attempt = now

    def member_up(self, member: Hashable) -> None:
        """A member is back (recovered by whatever means)."""
        with self._lock:
            self._down.pop(member, None)

    @property
    def disconnected(self) -> Mapping[Hashable, float]:
        """Members currently disconnected, with the time each went down."""
        with self._lock:
            return dict(self._down)

    # -- the pseudo-code ---------------------------------------------------
    def attempts_left(self) -> bool:
        """``recover_attempt_count < N`` with N = -1 meaning forever."""
        return self.max_attempts < 0 or self.attempts < self.max_attempts

    def due(self, now: float | None = None) -> Hashable | None:
        """Return the member to try now (the one down longest), or None.

        True exactly when the pseudo-code's condition holds.
        """
        now = self.clock() if now is None else now
        with self._lock:
            if not self._down or not self.attempts_left():
                return None
            last = self.last_attempt if self.last_attempt is not None else float("-inf")
            if now - last <= self.interval:
                return None
            return min(self._down.items(), key=lambda kv: kv[1])[0]

    def record(self, member: Hashable, success: bool, now: float | None = None) -> None:
        """Report the outcome of an attempt made because :meth:`due` said so."""
        now = self.clock() if now is None else now
        with self._lock:
            self.last_attempt = now
            if success:
                self._down.pop(member, None)
                self.attempts = 0
            else:
                self.attempts += 1

    def reset(self) -> None:
        """Forget the attempt count (e.g. after ``hagroup recover``)."""
        with self._lock:
            self.attempts = 0


__all__ = ["Clock", "RecoveryPolicy"]
