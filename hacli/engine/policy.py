"""The auto-recovery policy of the origin document, per member, as a small pure class.

The origin pseudo-code, run inside every PKCS#11 call made through a group::

    if (disconnected_member > 0 and recover_attempt_count < N
            and time_now - last_recover_attempt > X) then
        perform auto recovery                    # of ONE member
        set last_recover_attempt equal to time_now
        if (recovery failed) then increment recover_attempt_count by 1
        else decrement disconnected_member by 1; reset recover_attempt_count to 0

How hacli reads it (docs/engine.md, "Recovery"): the counter and the timer
belong to each disconnected member.  A member is tried when it has attempts
left (N = -1 forever, 0 never) and more than X seconds have passed since its
own last attempt, or since it went down (so its first attempt comes X seconds
after its failure).  One member is attempted per call, the one that has waited
longest since its last attempt, so members take turns: a member that never
comes back cannot block another that does, and one that used up its attempts
does not stop the others.  A success forgets the member's record; a member that
fails again later starts with a fresh count.  The clock is injectable so tests
run against fake time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class MemberRecovery:
    """One disconnected member's place in the policy."""

    #: When it was marked disconnected.
    down_since: float
    #: ``last_recover_attempt``: its last attempt, or ``down_since`` before the first.
    last_attempt: float
    #: ``recover_attempt_count`` of this member.
    attempts: int = 0


class RecoveryPolicy:
    """Decides when to attempt recovery and of which member.

    The class does no I/O; the engine asks :meth:`due` and reports the outcome
    with :meth:`record`.  Thread-safe.

    :param max_attempts: N (``reconnAtt``): -1 forever, 0 never, else the limit per member.
    :param interval: X (``AutoReconnectInterval``) in seconds.
    :param clock: monotonic clock in seconds (``time.monotonic`` by default).
    """

    def __init__(self, max_attempts: int = -1, interval: float = 60.0,
                 clock: Clock = time.monotonic):
        self.max_attempts = int(max_attempts)
        self.interval = float(interval)
        self.clock = clock
        self._down: dict[Hashable, MemberRecovery] = {}
        self._lock = threading.Lock()

    # -- members going down / coming back ---------------------------------
    def member_down(self, member: Hashable, now: float | None = None) -> None:
        """A member was marked disconnected: its X timer starts now, with a fresh
        count (a member already disconnected keeps its record)."""
        now = self.clock() if now is None else now
        with self._lock:
            if member not in self._down:
                self._down[member] = MemberRecovery(down_since=now, last_attempt=now)

    def member_up(self, member: Hashable) -> None:
        """A member is back (recovered by whatever means)."""
        with self._lock:
            self._down.pop(member, None)

    @property
    def any_down(self) -> bool:
        """True while some member is disconnected (a flag: no copy, no lock)."""
        return bool(self._down)

    @property
    def disconnected(self) -> Mapping[Hashable, float]:
        """Members currently disconnected, with the time each went down."""
        with self._lock:
            return {m: r.down_since for m, r in self._down.items()}

    def state_of(self, member: Hashable) -> MemberRecovery | None:
        """A copy of a disconnected member's record (None when it is not down)."""
        with self._lock:
            r = self._down.get(member)
            return None if r is None else MemberRecovery(r.down_since, r.last_attempt,
                                                         r.attempts)

    @property
    def attempts(self) -> int:
        """The most attempts any disconnected member has used (0 when none is down)."""
        with self._lock:
            return max((r.attempts for r in self._down.values()), default=0)

    # -- the pseudo-code ---------------------------------------------------
    def attempts_left(self, member: Hashable | None = None) -> int | None:
        """Attempts ``member`` has left: None for unlimited (N = -1).  Without a
        member: what the member with the most left has (for a status line)."""
        if self.max_attempts < 0:
            return None
        with self._lock:
            if member is None:
                used = min((r.attempts for r in self._down.values()), default=0)
            else:
                r = self._down.get(member)
                used = r.attempts if r is not None else 0
        return max(0, self.max_attempts - used)

    def next_attempt(self, member: Hashable) -> float | None:
        """Clock time after which ``member`` may be attempted; None when it is not
        down or has no attempts left."""
        with self._lock:
            r = self._down.get(member)
            if r is None or not self._has_attempts(r):
                return None
            return r.last_attempt + self.interval

    def _has_attempts(self, r: MemberRecovery) -> bool:
        return self.max_attempts < 0 or r.attempts < self.max_attempts

    def due(self, now: float | None = None,
            busy: Collection[Hashable] = ()) -> Hashable | None:
        """The member to try now, or None.

        Among the disconnected members with attempts left whose last attempt
        (or failure) is more than X seconds ago, the one that has waited longest;
        ``busy``: members an attempt is already running on (skipped).
        """
        now = self.clock() if now is None else now
        with self._lock:
            ready = [(r.last_attempt, r.down_since, i, m)
                     for i, (m, r) in enumerate(self._down.items())
                     if m not in busy and self._has_attempts(r)
                     and now - r.last_attempt > self.interval]
            return min(ready, key=lambda t: t[:3])[3] if ready else None

    def record(self, member: Hashable, success: bool, now: float | None = None) -> None:
        """Report the outcome of an attempt on ``member``."""
        now = self.clock() if now is None else now
        with self._lock:
            r = self._down.get(member)
            if r is None:
                return
            if success:
                del self._down[member]
            else:
                r.attempts += 1
                r.last_attempt = now

    def reset(self, member: Hashable | None = None) -> None:
        """Forget the attempt count of one member, or of all (``hagroup recover``)."""
        with self._lock:
            for m, r in self._down.items():
                if member is None or m == member:
                    r.attempts = 0


__all__ = ["Clock", "MemberRecovery", "RecoveryPolicy"]
