"""Counters of what each member did, cheap enough for every call.

Each :class:`~hacli.engine.member.Member` owns one :class:`MemberStats`.  The
engine updates it where it already counts: :meth:`Balancer.done
<hacli.engine.balancer.Balancer.done>` (every call the executor ran on a
member, under the group's lock it takes anyway), ``Executor.on_each`` and the
member state machine (:class:`~hacli.engine.members.MemberSet`).  An update is
a few integer increments and one ``bisect`` for the latency bucket; nothing
here formats, allocates a label set or takes a lock of its own.  Readers (the
Prometheus collector of :mod:`hacli.metrics`, ``ha status --watch``) take a
:class:`MemberMetrics` copy with :func:`snapshot` under the group's lock.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass

#: Upper bounds (seconds) of the per-member latency histogram; a last bucket
#: (``+Inf``) takes the rest.  From a local token's ~100 µs to a command timeout.
LATENCY_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MemberStats:
    """One member's counters (guarded by its group's lock)."""

    __slots__ = ("buckets", "calls", "errors", "failovers", "gave_ups", "last_failure",
                 "latency_sum", "state_changed")

    def __init__(self) -> None:
        #: operation name -> calls run on the member / calls that did not succeed there
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        #: observations per latency bucket (not cumulative; the last is +Inf)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        #: calls that failed on this member and moved on to another one
        self.failovers = 0
        #: times its automatic recovery attempts were used up
        self.gave_ups = 0
        #: wall-clock time of its last state change and of its last failure
        self.state_changed = time.time()
        self.last_failure: float | None = None

    def record(self, operation: str, ok: bool, seconds: float) -> None:
        """One call on the member returned after ``seconds`` (``ok``: served)."""
        calls = self.calls
        calls[operation] = calls.get(operation, 0) + 1
        if not ok:
            errors = self.errors
            errors[operation] = errors.get(operation, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


@dataclass(frozen=True)
class MemberMetrics:
    """A copy of one member's counters and state, taken at one moment."""

    group: str
    serial: str
    state: str
    alive: bool
    in_flight: int
    calls: dict[str, int]
    errors: dict[str, int]
    #: observations per bucket of :data:`LATENCY_BUCKETS` (+Inf last), not cumulative
    buckets: tuple[int, ...]
    latency_sum: float
    failovers: int
    failures: int
    recoveries: int
    gave_ups: int
    #: wall-clock times (epoch seconds)
    state_changed: float
    last_failure: float | None

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())


__all__ = ["LATENCY_BUCKETS", "MemberMetrics", "MemberStats"]
