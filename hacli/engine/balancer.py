"""Which member serves a single-part call: the least busy, round robin on a tie.

Calls in flight are counted per member (``Member.in_flight``); the pick counts
the call in and :meth:`Balancer.done` counts it out (and counts a served
operation, ``Member.ops``, for ``multitoken`` and status reports).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from hacli.engine.member import Member
from hacli.engine.objects import VObject


class Balancer:
    """Balancing over one group's members.

    ``lock`` is the group's lock: the pick reads member state it guards.
    """

    def __init__(self, members: Sequence[Member], lock: threading.RLock):
        self._members = members
        self._lock = lock
        self._next = 0  # list index after the last pick

    def __repr__(self) -> str:
        return f"<Balancer next={self._next}>"

    def pick(self, tried: set[Member], only: Member | None,
             vobjs: Sequence[VObject] = ()) -> Member | None:
        """An alive member not in ``tried`` (``only``: that one) on which none
        of ``vobjs`` is known to be absent, counted in; None when there is none."""
        with self._lock:
            cands = [(i, m) for i, m in enumerate(self._members)
                     if m.alive and m.conn is not None and m not in tried
                     and (only is None or m is only)
                     and not any(v.absent.get(m.serial) == m.conn.id for v in vobjs)]
            if not cands:
                return None
            n = len(self._members)
            # least busy; on a tie the next one after the last pick (round robin)
            low = min(m.in_flight for _, m in cands)
            best = min((c for c in cands if c[1].in_flight == low),
                       key=lambda c: (c[0] - self._next) % n)
            self._next = (best[0] + 1) % n
            best[1].in_flight += 1
            return best[1]

    def done(self, m: Member, ok: bool) -> None:
        """The call picked on ``m`` returned (``ok``: it was served)."""
        with self._lock:
            m.in_flight -= 1
            if ok:
                m.ops += 1


__all__ = ["Balancer"]
