"""Members coming and going: connect, the recovery policy, the background thread.

The origin pseudo-code (:class:`~hacli.engine.policy.RecoveryPolicy`, per
member) runs before every call through the group (:meth:`Recovery.tick`) and,
with ``activeEnhanced``, on a background thread too.  Recovering a member = a
clean module instance (a fresh copy if the old one was abandoned, else
re-initialised: whatever state a failed attempt left it in), sessions, login
with the kept PIN; the member is back once those real calls succeeded.  Its
catch-up (sync.py) then runs on a thread of its own, never inside the
application call that recovered it.

Collaborators: the group's :class:`~hacli.engine.members.MemberSet` (states,
policy), the engine's :class:`~hacli.engine.module.InstanceRegistry` and every
member of the engine (instances may be shared across groups), the PIN source
(:meth:`hacli.engine.login.Login.pin`), and two hooks of the synchroniser:
``catch_up(member)`` and ``periodic()`` (with ``periodic_due()``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable

from hacli.conf.model_types import MemberLocation
from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.engine.member import Member, open_connection
from hacli.engine.members import MemberSet
from hacli.engine.module import InstanceRegistry, module_key
from hacli.engine.parallel import in_parallel
from hacli.engine.types import RecoveryOutcome, RecoveryResult


class Recovery:
    """Connecting members, and recovering those that are down."""

    def __init__(self, label: str, members: MemberSet, *, registry: InstanceRegistry,
                 all_members: Callable[[], Iterable[Member]], pin: Callable[[], str | None],
                 timeout: float, enhanced: bool,
                 catch_up: Callable[[Member], None],
                 periodic_due: Callable[[], bool], periodic: Callable[[], None]):
        self.label = label
        self._members = members
        self._registry = registry
        self._all_members = all_members
        self._pin = pin
        self._timeout = timeout
        self._enhanced = enhanced
        self._catch_up = catch_up
        self._periodic_due = periodic_due
        self._periodic = periodic
        # one attempt per member at a time (other threads go on); attempts on
        # different members may run at once, so a member whose attempt hangs
        # (frozen again) never holds another member back
        self._lock = threading.Lock()
        self._attempting: set[str] = set()
        self._instance_locks: dict[object, threading.Lock] = {}
        self._stop = threading.Event()
        self._bg: threading.Thread | None = None
        self._catch_up_threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return f"<Recovery {self.label} down={sorted(map(str, self._members.policy.disconnected))}>"

    def start(self) -> None:
        """Connect every member (in parallel, each bounded by the timeout)."""
        in_parallel(self._initial_connect, list(self._members))
        if self._enhanced:
            self._bg = threading.Thread(target=self._background, daemon=True,
                                        name=f"hacli-recovery-{self.label}")
            self._bg.start()

    def _initial_connect(self, m: Member) -> None:
        try:
            self._connect(m, clean=False)
        except Exception as e:
            self._members.mark_failed(m, e)

    def stop(self) -> None:
        """Stop the background recovery thread and wait for catch-up threads."""
        self._stop.set()
        if self._bg is not None:
            self._bg.join(5.0)
            self._bg = None
        with self._members.lock:
            catching_up, self._catch_up_threads = self._catch_up_threads, []
        for t in catching_up:
            t.join(self._timeout + 5.0)

    def _background(self) -> None:
        # activeEnhanced: run the same policy without application calls.
        period = max(0.05, min(0.5, self._members.policy.interval / 4.0))
        while not self._stop.wait(period):
            with contextlib.suppress(Exception):
                self.tick()

    def _connect(self, m: Member, clean: bool) -> None:
        """(Re)connect one member: instance, sessions, login.  Raises on failure.

        ``clean`` (a recovery attempt): an instance loaded earlier is
        re-initialised unless a member in service shares it, because a module
        loaded or last initialised while the member was unreachable keeps
        answering from that state (p11-kit's client: zero slots, for good).
        """
        loc = m.location
        if loc is None:
            raise CKRError(CKR.TOKEN_NOT_PRESENT, "connect", m.serial,
                           detail="no module location configured for this member")
        # the attempt as a whole keeps to the command timeout (it may run
        # inside an application call)
        deadline = time.monotonic() + self._timeout
        with self._lock:
            # members sharing a module instance connect one after the other
            # (a re-initialisation for one would cut the other's fresh sessions)
            key_lock = self._instance_locks.setdefault(module_key(loc.library, loc.env),
                                                       threading.Lock())
        with key_lock:
            self._connect_on(m, loc, clean, deadline)

    def _connect_on(self, m: Member, loc: MemberLocation, clean: bool, deadline: float) -> None:
        inst = self._registry.current(loc.library, loc.env, m.serial)
        if inst.lib is None:
            inst.load(self._timeout)
        elif clean:
            peers = [o for o in self._all_members()
                     if o is not m and o.alive and o.conn is not None and o.conn.instance is inst]
            if not peers:
                inst.reinitialize(self._timeout)
        left = max(0.05, deadline - time.monotonic())
        conn = inst.call(open_connection, inst, m.serial, self._pin(), timeout=left,
                         operation="C_OpenSession")
        self._members.mark_connected(m, inst, conn, recovered=clean)

    def tick(self) -> bool:
        """The origin pseudo-code; run before every call through the group.

        Returns True when a member was recovered.
        """
        policy = self._members.policy
        if not policy.any_down and not self._periodic_due():
            return False
        with self._lock:
            serial = policy.due(busy=self._attempting)
            if serial is not None:
                self._attempting.add(str(serial))
        if serial is None:
            if self._periodic_due():
                self._periodic()
            return False
        try:
            return self._recover(self._members.get(serial))
        finally:
            with self._lock:
                self._attempting.discard(str(serial))

    def _recover(self, m: Member, catch_up_inline: bool = False, counted: bool = True) -> bool:
        """One attempt on ``m``, recorded in the policy before anything else can
        mark the member down again (then it starts a fresh record).  Its catch-up
        runs on a thread of its own, or here with ``catch_up_inline``.
        ``counted``: a failure spends one of the policy's attempts."""
        self._members.mark_recovering(m)
        try:
            self._connect(m, clean=True)
        except Exception as e:
            self._members.mark_attempt_failed(m, e, counted=counted)
            return False
        if catch_up_inline:
            self._run_catch_up(m)
        else:
            self._start_catch_up(m)
        return True

    def _run_catch_up(self, m: Member) -> None:
        try:
            self._catch_up(m)
        finally:
            self._members.mark_caught_up(m)

    def _start_catch_up(self, m: Member) -> None:
        """Catch ``m`` up off the caller's path; until then the balancer sends it
        only what it holds (objects it lacks fail over to another member)."""
        if self._stop.is_set():
            self._members.mark_caught_up(m)
            return
        t = threading.Thread(target=self._run_catch_up, args=(m,), daemon=True,
                             name=f"hacli-catch-up-{self.label}-{m.serial}")
        with self._members.lock:
            self._catch_up_threads = [x for x in self._catch_up_threads if x.is_alive()]
            self._catch_up_threads.append(t)
        t.start()

    def recover(self, serial: str | None = None) -> tuple[RecoveryResult, ...]:
        """An administrator's recovery (``hagroup recover``): one attempt now on
        ``serial``, or on every member that is down, whatever the policy says --
        also when its attempts (``reconnAtt``) are used up or recovery is off.
        Returns a result for ``serial``, or for every member (``IN_SERVICE``
        for those that serve).

        A success resets the member's attempt count and logs ``recovered``; a
        failure logs ``recovery-failed`` but spends none of the automatic
        attempts.  Each attempt waits for the member's catch-up, so a member
        that fails during it is reported as failed.
        """
        targets = [self._members.get(serial)] if serial is not None else list(self._members)
        return tuple(self._recover_by_hand(m) for m in targets)

    def recover_now(self, serial: str | None = None) -> bool:
        """:meth:`recover` of ``serial``, or of the member down longest; True
        when it serves afterwards (False when none is down)."""
        if serial is None:
            down = self._members.policy.disconnected
            if not down:
                return False
            serial = str(min(down.items(), key=lambda kv: kv[1])[0])
        return self._recover_by_hand(self._members.get(serial)).ok

    def _recover_by_hand(self, m: Member) -> RecoveryResult:
        if m.alive:
            return RecoveryResult(m.serial, RecoveryOutcome.IN_SERVICE)
        with self._lock:
            if m.serial in self._attempting:
                # an attempt is running on it right now
                return RecoveryResult(m.serial, RecoveryOutcome.BUSY)
            self._attempting.add(m.serial)
        try:
            # not an application call: it may wait for the catch-up, and
            # reports a member that failed during it
            if self._recover(m, catch_up_inline=True, counted=False) and m.alive:
                return RecoveryResult(m.serial, RecoveryOutcome.RECOVERED)
            return RecoveryResult(m.serial, RecoveryOutcome.FAILED, m.last_error)
        finally:
            with self._lock:
                self._attempting.discard(m.serial)


__all__ = ["Recovery"]
