"""Which member serves a single-part call: the least busy, round robin on a tie.

Calls in flight are counted per member (``Member.in_flight``); the pick counts
the call in and :meth:`Balancer.done` counts it out (and counts a served
operation, ``Member.ops``, for ``multitoken`` and status reports) and records
the call in the member's :class:`~hacli.engine.stats.MemberStats` (calls and
errors per operation, latency, failovers).

One lock a call: the pick takes none.  It reads attributes that are replaced
whole (a member's ``alive`` and ``conn``, the roles' tuples) and counts the
call in with an atomic deque append (``Member.flight``).  A pick racing a
member being marked down is a call picked just before the mark, which the
call path meets anyway (the call fails over).  The round-robin position is a
hint: a lost update only changes which of two idle members is tried first.
``done`` takes the group's lock for the counters it shares with status
readers (``ops``, ``stats``).

The members balanced over are the group's standby roles' ``candidates``
(:mod:`hacli.engine.standby`: every member, unless some are standby), a tuple
precomputed on state changes, so the call path reads one attribute.  The
``reserve`` (standbys not promoted) is asked only when no candidate can take
the call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence, Set

from hacli.engine.member import Member
from hacli.engine.objects import VObject
from hacli.engine.standby import StandbyRoles


def _absent_from(vobjs: Sequence[VObject], serial: str, conn_id: int) -> bool:
    """True when one of ``vobjs`` is known to be absent from that connection
    (and the memo is not due for another look)."""
    # a loop, not any(genexpr): no generator object on the call path; the
    # method only where a memo exists
    for v in vobjs:  # noqa: SIM110
        if serial in v.absent and v.absent_from(serial, conn_id):
            return True
    return False


def _least_busy(members: Sequence[Member], start: int, tried: Set[Member],
                only: Member | None, vobjs: Sequence[VObject]) -> tuple[Member | None, int]:
    """The least busy member that can take the call, looking from index
    ``start`` round robin (an idle one at once), and its index."""
    n = len(members)
    best: Member | None = None
    best_load = best_at = 0
    for k in range(n):
        at = (start + k) % n
        m = members[at]
        conn = m.conn
        if not m.alive or conn is None or (only is not None and m is not only):
            continue
        if tried and m in tried:
            continue
        if vobjs and _absent_from(vobjs, m.serial, conn.id):
            continue
        load = len(m.flight)
        if best is None or load < best_load:
            best, best_load, best_at = m, load, at
            if best_load == 0:
                break
    return best, best_at


class Balancer:
    """Balancing over one group's members.

    ``lock`` is the group's lock, taken by :meth:`done` only (see the module
    docstring).
    """

    def __init__(self, roles: StandbyRoles, lock: threading.RLock):
        self._roles = roles
        self._lock = lock
        self._next = 0  # index in the candidates after the last pick

    def __repr__(self) -> str:
        return f"<Balancer next={self._next}>"

    def pick(self, tried: Set[Member], only: Member | None,
             vobjs: Sequence[VObject] = ()) -> Member | None:
        """An alive member not in ``tried`` (``only``: that one) on which none
        of ``vobjs`` is known to be absent, counted in; None when there is none."""
        roles = self._roles
        # round-robin order from the member after the last pick; the first
        # least busy one wins (so a tie goes round robin)
        candidates = roles.candidates
        best, at = _least_busy(candidates, self._next, tried, only, vobjs)
        if best is not None:
            self._next = (at + 1) % len(candidates)
        else:
            reserve = roles.reserve
            if reserve:
                # no candidate can take it: a standby does, rather than an error
                best, _ = _least_busy(reserve, 0, tried, only, vobjs)
            if best is None:
                return None
        best.flight.append(None)
        return best

    def done(self, m: Member, ok: bool, operation: str, seconds: float,
             failover: bool = False) -> None:
        """The call ``operation`` picked on ``m`` returned after ``seconds``
        (``ok``: it was served; ``failover``: ``m`` failed and the call moves on)."""
        m.flight.pop()
        self.count(m, ok, operation, seconds, failover)

    def count(self, m: Member, ok: bool, operation: str, seconds: float,
              failover: bool = False) -> None:
        """Count a call ``operation`` on ``m`` that took ``seconds`` (a served
        operation when ``ok``) in the counters status readers share; also for
        calls run on every member, which the balancer did not pick."""
        with self._lock:
            if ok:
                m.ops += 1
            stats = m.stats
            stats.record(operation, ok, seconds)
            if failover:
                stats.failovers += 1


__all__ = ["Balancer"]
