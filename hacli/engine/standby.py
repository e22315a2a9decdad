"""Standby members: which members the balancer asks, and when a standby steps in.

A group's *standby* members (``VirtualTokenNNStandby``, Luna's ``hagroup
addstandby``) are members like any other for everything but balancing: they
are connected and logged in, receive every replicated object, are
synchronised and journaled for.  They serve no call while an *active* member
(one that is not standby) serves.  When no active member is left in service,
the standby that has been in service longest is *promoted* and serves every
call (``standby-promoted`` in the HA log); as soon as an active member is back
in service, the promoted standby returns to standby (``standby-demoted``).

:class:`StandbyRoles` is the small collaborator that knows this.  It is told
of every member state change (:meth:`update`, called by
:class:`~hacli.engine.members.MemberSet` with the group lock held) and
precomputes two tuples the balancer reads on every call, so that the call
path costs one attribute read, not a role check per member:

* ``candidates`` -- the members the balancer balances over: the active
  members, plus the promoted standby while there is one;
* ``reserve`` -- the standbys that are not promoted.  The balancer turns to
  them only when no candidate can take a call at all: a session pinned to a
  standby's member slot, or an object that only a standby holds (made while
  it was promoted, not yet copied to a returning active member).  A standby
  answering then is better than an application error.

A group without standby members has ``candidates`` = every member and an
empty ``reserve``, fixed for its lifetime: :meth:`update` returns at once and
the balancer behaves exactly as without this module.

Promotions wait for the group's first connections (:meth:`start`), so an
engine starting up does not log a promotion because a standby happened to
answer before an active member.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from hacli.engine import halog
from hacli.engine.member import Member


class RoleChange(NamedTuple):
    """A standby promoted or demoted: what the HA log records."""

    serial: str
    event: str  # halog.STANDBY_PROMOTED or halog.STANDBY_DEMOTED


#: No role change (shared, so the common case allocates nothing).
NO_CHANGE: tuple[RoleChange, ...] = ()


class StandbyRoles:
    """Which members serve calls: the active ones, or a promoted standby.

    Not thread-safe on its own: :meth:`update` and :meth:`start` run with the
    group lock held (the balancer reads the tuples under the same lock).
    """

    def __init__(self, members: Sequence[Member], standby: Collection[str] = ()):
        self.members = tuple(members)
        self.standby = tuple(m for m in self.members if m.serial in standby)
        self.active = tuple(m for m in self.members if m.serial not in standby)
        #: The standby serving in place of the active members, or None.
        self.promoted: Member | None = None
        #: What the balancer balances over (see the module docstring).
        self.candidates: tuple[Member, ...] = self.active
        #: Standbys asked only when no candidate can take a call.
        self.reserve: tuple[Member, ...] = self.standby
        self._started = False

    def __repr__(self) -> str:
        promoted = self.promoted.serial if self.promoted is not None else None
        return (f"<StandbyRoles standby={[m.serial for m in self.standby]} "
                f"promoted={promoted}>")

    def role_of(self, m: Member) -> str:
        """``active``, ``standby`` or ``promoted`` (a standby serving now)."""
        if m is self.promoted:
            return "promoted"
        return "standby" if m in self.standby else "active"

    def start(self) -> tuple[RoleChange, ...]:
        """The group's members are connected: roles apply from now on."""
        self._started = True
        return self.update()

    def update(self) -> tuple[RoleChange, ...]:
        """A member's state changed: promote or demote a standby if needed."""
        if not self.standby or not self._started:
            return NO_CHANGE
        changes: list[RoleChange] = []
        promoted = self.promoted
        if any(m.alive for m in self.active):
            if promoted is not None:
                # an active member serves again: the standby steps back, even
                # while that member is still catching up (objects it lacks are
                # routed to the reserve by the balancer)
                changes.append(RoleChange(promoted.serial, halog.STANDBY_DEMOTED))
                promoted = None
        else:
            if promoted is not None and not promoted.alive:
                promoted = None  # it failed too (its `failed` line says so)
            if promoted is None:
                serving = [m for m in self.standby if m.alive]
                if serving:
                    # the longest in service: the least likely to be flapping
                    promoted = min(serving, key=_up_since)
                    changes.append(RoleChange(promoted.serial, halog.STANDBY_PROMOTED))
        if promoted is not self.promoted:
            self.promoted = promoted
            self.candidates = self.active + ((promoted,) if promoted is not None else ())
            self.reserve = tuple(m for m in self.standby if m is not promoted)
        return tuple(changes)


def _up_since(m: Member) -> float:
    return m.up_since if m.up_since is not None else float("inf")


__all__ = ["NO_CHANGE", "RoleChange", "StandbyRoles"]
