"""The members of one group: their state machines, the balancer, and failure news.

:class:`MemberSet` is the one part of the engine that changes a member's state.
Every transition goes through :meth:`MemberSet.transition`, is logged (the
``hacli.engine`` logger; ``failed``/``recovered`` also in the HA log) and, for a
member going down, reported to the recovery policy and to the listeners the
group registered (its sessions end their multi-part operations there): a
failure travels one way, member -> group -> sessions.

States (``MemberState``): ``ALIVE`` (in service), ``DOWN``, ``RECOVERING`` (an
attempt is connecting it; it serves nothing), ``SYNCHRONISING`` (back in
service, being caught up in the background; it serves what it holds).  The
attempt count and the time of the last attempt of a down member live in the
recovery policy's record of that member (:mod:`hacli.engine.policy`).

Which members serve calls is :class:`~hacli.engine.standby.StandbyRoles`'
business (``roles``): told of every transition, it promotes a standby when no
active member is left and demotes it when one is back; those changes are
logged here too (``standby-promoted``/``standby-demoted``).

Every state change is also told to the *change listeners* (:meth:`MemberSet.on_change`:
``ha status --watch``, ``hacli serve``'s status socket) as a :class:`StateChange`,
and stamped in the member's stats (:mod:`hacli.engine.stats`) for the metrics.

Locking: ``lock`` guards member state and counters and is never held while
calling into a member (nor while writing the HA log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hacli.engine import halog
from hacli.engine.balancer import Balancer
from hacli.engine.ckr import CKR, ckr_name, is_member_failure
from hacli.engine.exceptions import CKRError
from hacli.engine.member import SERVING_STATES, Connection, Member, MemberState
from hacli.engine.module import ModuleInstance
from hacli.engine.policy import Clock, RecoveryPolicy
from hacli.engine.standby import NO_CHANGE, RoleChange, StandbyRoles
from hacli.engine.stats import MemberMetrics

T = TypeVar("T")

LOG = logging.getLogger("hacli.engine")

#: A listener told (group lock held) that a member was marked down.
FailureListener = Callable[[Member], None]


@dataclass(frozen=True)
class StateChange:
    """A member moved from one state to another (``time``: epoch seconds)."""

    group: str
    serial: str
    old: MemberState
    new: MemberState
    reason: str | None
    time: float


#: A listener told (group lock possibly held: it must not block) of every state change.
ChangeListener = Callable[[StateChange], None]


class MemberSet:
    """The members of one group and everything about their state."""

    def __init__(self, label: str, members: Sequence[Member], policy: RecoveryPolicy,
                 log: halog.HALog | halog.NullLog, clock: Clock,
                 standby: Collection[str] = ()):
        self.label = label
        self.members: tuple[Member, ...] = tuple(members)
        self.policy = policy
        self.clock = clock
        self.lock = threading.RLock()
        self.roles = StandbyRoles(self.members, standby)
        self.balancer = Balancer(self.roles, self.lock)
        self._log = log
        self._listeners: list[FailureListener] = []
        self._change_listeners: list[ChangeListener] = []

    def __iter__(self) -> Any:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def on_failure(self, listener: FailureListener) -> None:
        """Call ``listener(member)`` (lock held) whenever a member is marked down."""
        self._listeners.append(listener)

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener(change)`` on every member state change (possibly with
        the lock held: the listener only queues)."""
        self._change_listeners.append(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Stop telling ``listener`` (a watcher that went away)."""
        with self.lock:
            if listener in self._change_listeners:
                self._change_listeners.remove(listener)

    # -- lookup ------------------------------------------------------------
    def get(self, serial: Any) -> Member:
        """The member with this serial (``CKR_ARGUMENTS_BAD`` if it is not one)."""
        for m in self.members:
            if m.serial == serial:
                return m
        raise CKRError(CKR.ARGUMENTS_BAD, "member", str(serial),
                       detail="not a member of this group")

    def serving(self, only: Member | None = None) -> list[Member]:
        """The members that serve (``only``: that one, if it does)."""
        return [m for m in self.members if m.alive and (only is None or m is only)]

    def any_serving(self) -> bool:
        return any(m.alive for m in self.members)

    # -- the state machine -------------------------------------------------
    def transition(self, m: Member, state: MemberState,
                   reason: str | None = None) -> tuple[RoleChange, ...]:
        """Move ``m`` to ``state`` (lock held by the caller or taken here).

        Returns the standby promotions/demotions it caused, for the caller to
        log (:meth:`_log_roles`) once the lock is released.
        """
        with self.lock:
            old = m.state
            m.state = state
            if reason is not None:
                m.last_error = reason
            changes = NO_CHANGE
            if old is not state:
                changes = self.roles.update()
                now = m.stats.state_changed = time.time()
                if state is MemberState.DOWN and old in SERVING_STATES:
                    m.stats.last_failure = now
                change = StateChange(self.label, m.serial, old, state, m.last_error, now)
                for listener in self._change_listeners:
                    listener(change)
        if old is not state:
            LOG.debug("%s %s: %s -> %s%s", self.label, m.serial, old.value, state.value,
                      f" ({reason})" if reason else "")
        return changes

    def start_roles(self) -> None:
        """The group's first connections are made: standby roles apply from now
        on (a standby is promoted at once if no active member answered)."""
        with self.lock:
            changes = self.roles.start()
        self._log_roles(changes)

    def _log_roles(self, changes: tuple[RoleChange, ...]) -> None:
        for change in changes:
            LOG.info("%s %s: %s", self.label, change.serial, change.event)
            self._log.event(self.label, change.serial, change.event, None)

    def mark_failed(self, m: Member, error: BaseException | str) -> None:
        """``m`` is down: out of balancing, its multi-part operations over, its
        recovery scheduled, one ``failed`` line in the HA log (once per failure)."""
        ckr = ckr_name(error)
        with self.lock:
            if m.state is MemberState.DOWN and m.conn is None and m.last_error is not None:
                return
            changes = self.transition(m, MemberState.DOWN, ckr)
            m.conn = None
            m.down_since = self.clock()
            m.up_since = None
            m.failure_reported = False
            m.failures += 1
            for listener in self._listeners:
                listener(m)
        self.policy.member_down(m.serial)
        self._log.event(self.label, m.serial, halog.FAILED, ckr)
        self._log_roles(changes)

    def mark_recovering(self, m: Member) -> None:
        """A recovery attempt on ``m`` begins (it still serves nothing)."""
        self._log_roles(self.transition(m, MemberState.RECOVERING))

    def mark_attempt_failed(self, m: Member, error: BaseException, counted: bool = True) -> None:
        """A recovery attempt on ``m`` failed: down again.

        ``counted`` (an attempt of the policy): the policy counts it, and the
        attempt that uses up the last one logs ``gave-up`` (once: no attempt
        follows).  An administrator's attempt (:meth:`Recovery.recover`) is
        not counted: it neither spends nor renews the automatic attempts.
        """
        with self.lock:
            m.conn = None
            changes = self.transition(m, MemberState.DOWN, ckr_name(error))
        if counted:
            self.policy.record(m.serial, False)
        self._log.event(self.label, m.serial, halog.RECOVERY_FAILED, ckr_name(error))
        if counted and self.policy.attempts_left(m.serial) == 0:
            with self.lock:
                m.stats.gave_ups += 1
            self._log.event(self.label, m.serial, halog.GAVE_UP, ckr_name(error))
        self._log_roles(changes)

    def mark_connected(self, m: Member, instance: ModuleInstance, conn: Connection,
                       recovered: bool) -> None:
        """``m`` answered real calls on ``conn``: in service.  A recovered member
        is *synchronising* until :meth:`mark_caught_up`."""
        with self.lock:
            m.instance = instance
            m.conn = conn
            m.down_since = None
            m.up_since = self.clock()
            m.failure_reported = False
            m.last_error = None
            changes = self.transition(
                m, MemberState.SYNCHRONISING if recovered else MemberState.ALIVE)
        if recovered:
            m.recoveries += 1
            self.policy.record(m.serial, True)
            self._log.event(self.label, m.serial, halog.RECOVERED, None)
        else:
            # back since another process logged it down (it came back unwatched)
            self._log.seen_up(self.label, m.serial)
        self.policy.member_up(m.serial)
        self._log_roles(changes)

    def mark_caught_up(self, m: Member) -> None:
        """The catch-up after ``m``'s recovery is over (whatever it managed)."""
        with self.lock:
            changes = (self.transition(m, MemberState.ALIVE)
                       if m.state is MemberState.SYNCHRONISING else NO_CHANGE)
        self._log_roles(changes)

    def metrics(self) -> tuple[MemberMetrics, ...]:
        """A copy of every member's counters and state (:mod:`hacli.engine.stats`)."""
        with self.lock:
            return tuple(MemberMetrics(
                group=self.label, serial=m.serial, state=m.state.value, alive=m.alive,
                in_flight=m.in_flight, calls=dict(m.stats.calls), errors=dict(m.stats.errors),
                buckets=tuple(m.stats.buckets), latency_sum=m.stats.latency_sum,
                failovers=m.stats.failovers, failures=m.failures, recoveries=m.recoveries,
                gave_ups=m.stats.gave_ups, state_changed=m.stats.state_changed,
                last_failure=m.stats.last_failure) for m in self.members)

    # -- calls whose failure is nobody's error ------------------------------
    def best_effort(self, m: Member, fn: Callable[..., T], *args: Any,
                    operation: str) -> T | None:
        """``m.run(fn, *args)`` for a call whose failure is nobody's error (probe,
        logout, abort, inventory): a member failure marks ``m`` down, any other
        error is dropped; None then."""
        try:
            return m.run(fn, *args, operation=operation)
        except Exception as e:
            if is_member_failure(e):
                self.mark_failed(m, e)
            return None


__all__ = ["ChangeListener", "FailureListener", "MemberSet", "StateChange"]
