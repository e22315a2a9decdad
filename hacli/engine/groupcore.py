"""What the parts of an HA group share: its state, member lookup, a member going down.

:class:`~hacli.engine.group.HAGroup` is assembled from parts, one module each
(recovery, login, execution, operations, replicas, sync); every part derives
from :class:`GroupCore`, which sets the state they share.  A part calls the
others through ``self``; each part's docstring says which ones it uses.

Locking: ``self._lock`` guards member state, counters and the object registry
and is never held while calling into a member; calls into a member are
serialised by its module instance's worker.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from hacli.conf.model_types import GroupConf, HASettings
from hacli.engine import halog
from hacli.engine.balancer import Balancer
from hacli.engine.ckr import ckr_name, is_member_failure
from hacli.engine.exceptions import CKRError
from hacli.engine.member import Member, MemberState
from hacli.engine.module import InstanceRegistry
from hacli.engine.objects import ObjectRegistry
from hacli.engine.policy import Clock, RecoveryPolicy

if TYPE_CHECKING:
    from hacli.engine.login import Secret
    from hacli.engine.session import VirtualSession

T = TypeVar("T")


class GroupCore:
    """The state of one HA group (see :class:`~hacli.engine.group.HAGroup`)."""

    def __init__(self, conf: GroupConf, members: Sequence[Member], *, settings: HASettings,
                 registry: InstanceRegistry, all_members: Callable[[], Iterable[Member]],
                 log: halog.HALog | halog.NullLog, ids: itertools.count[int],
                 clock: Clock = time.monotonic, slot_id: int | None = None):
        self.conf = conf
        self.label = conf.label
        self.serial = conf.serial
        self.slot_id = slot_id
        self.members: tuple[Member, ...] = tuple(members)
        self.settings = settings
        self.timeout = max(0.001, settings.receive_timeout_ms / 1000.0)
        self.policy = RecoveryPolicy(settings.reconn_att, settings.auto_reconnect_interval, clock)
        self.clock = clock
        self._registry = registry
        self._all_members = all_members
        self._log = log
        self._ids = ids
        self._lock = threading.RLock()
        self._objects = ObjectRegistry(self._lock, ids)  # virtual object handles
        self._balancer = Balancer(self.members, self._lock)
        self._sessions: dict[int, VirtualSession] = {}  # open virtual sessions by handle
        # recovery.py: one recovery at a time (other threads go on); activeEnhanced thread
        self._recover_lock = threading.Lock()
        self._stop = threading.Event()
        self._bg: threading.Thread | None = None
        # recovery.py: catch-up synchronisations running after recoveries
        self._catch_up_threads: list[threading.Thread] = []
        # login.py: the user PIN, kept to log recovered members in
        self._pin: Secret | None = None
        # sync.py: one synchronisation at a time; when the automatic one runs next
        self._sync_lock = threading.Lock()
        self._last_sync = clock()
        self._sync_period = self.policy.interval

    def _member(self, serial: Any) -> Member:
        """The member with this serial (``CKR_ARGUMENTS_BAD`` if it is not one)."""
        for m in self.members:
            if m.serial == serial:
                return m
        raise CKRError("CKR_ARGUMENTS_BAD", "member", str(serial),
                       detail="not a member of this group")

    def _mark_failed(self, m: Member, error: BaseException | str) -> None:
        """``m`` is down: out of balancing, its multi-part operations over, its
        recovery scheduled, one ``failed`` line in the HA log (once per failure)."""
        ckr = ckr_name(error)
        with self._lock:
            if m.state is MemberState.DOWN and m.conn is None and m.last_error is not None:
                return
            m.state = MemberState.DOWN
            m.conn = None
            m.down_since = self.clock()
            m.failure_reported = False
            m.last_error = ckr
            m.failures += 1
            for vs in self._sessions.values():
                vs._member_failed(m)
        self.policy.member_down(m.serial)
        self._log.event(self.label, m.serial, halog.FAILED, ckr)

    def _best_effort(self, m: Member, fn: Callable[..., T], *args: Any,
                     operation: str) -> T | None:
        """``m.run(fn, *args)`` for a call whose failure is nobody's error (probe,
        logout, abort, inventory): a member failure marks ``m`` down, any other
        error is dropped; None then."""
        try:
            return m.run(fn, *args, operation=operation)
        except Exception as e:
            if is_member_failure(e):
                self._mark_failed(m, e)
            return None

    def _alive_members(self, only: Member | None = None) -> list[Member]:
        """The members that serve (``only``: that one, if it does)."""
        return [m for m in self.members if m.alive and (only is None or m is only)]


__all__ = ["GroupCore"]
