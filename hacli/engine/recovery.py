"""Members coming and going: connect, the recovery policy, the background thread.

The origin pseudo-code (:class:`~hacli.engine.policy.RecoveryPolicy`, per
member) runs before every call through the group (:meth:`Recovery.recovery_tick`)
and, with ``activeEnhanced``, on a background thread too.  Recovering a member =
a clean module instance (a fresh copy if the old one was abandoned, else
re-initialised: whatever state a failed attempt left it in), sessions, login
with the kept PIN; the member is back once those real calls succeeded.  Its
catching up (sync.py) then runs on a thread of its own, never inside the
application call that recovered it.  Marking a member down is in
groupcore.py: every part does it.

Uses from the other parts: ``_pin`` (login.py); ``_sync_due``, ``_sync_all``,
``_after_recovery`` (sync.py).
"""

from __future__ import annotations

import contextlib
import threading

from hacli.engine import halog
from hacli.engine.ckr import ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.groupcore import GroupCore
from hacli.engine.member import Member, MemberState, open_connection
from hacli.engine.parallel import in_parallel


class Recovery(GroupCore):
    """Connecting members, and recovering those that are down."""

    def start(self) -> None:
        """Connect every member (in parallel, each bounded by the timeout)."""
        in_parallel(self._initial_connect, self.members)
        if self.settings.recovery_mode == "activeEnhanced":
            self._bg = threading.Thread(target=self._background, daemon=True,
                                        name=f"hacli-recovery-{self.label}")
            self._bg.start()

    def _initial_connect(self, m: Member) -> None:
        try:
            self._connect(m)
        except Exception as e:
            self._mark_failed(m, e)

    def stop(self) -> None:
        """Stop the background recovery thread and wait for catch-up threads."""
        self._stop.set()
        if self._bg is not None:
            self._bg.join(5.0)
            self._bg = None
        with self._lock:
            catching_up, self._catch_up_threads = self._catch_up_threads, []
        for t in catching_up:
            t.join(self.timeout + 5.0)

    def _background(self) -> None:
        # activeEnhanced: run the same policy without application calls.
        period = max(0.05, min(0.5, self.policy.interval / 4.0))
        while not self._stop.wait(period):
            with contextlib.suppress(Exception):
                self.recovery_tick()

    def _connect(self, m: Member, clean: bool = False) -> None:
        """(Re)connect one member: instance, sessions, login.  Raises on failure.

        ``clean`` (a recovery attempt): an instance loaded earlier is
        re-initialised unless a member in service shares it, because a module
        loaded or last initialised while the member was unreachable keeps
        answering from that state (p11-kit's client: zero slots, for good).
        """
        loc = m.location
        if loc is None:
            raise CKRError("CKR_TOKEN_NOT_PRESENT", "connect", m.serial,
                           detail="no module location configured for this member")
        inst = self._registry.current(loc.library, loc.env, m.serial)
        if inst.lib is None:
            inst.load(self.timeout)
        elif clean:
            peers = [o for o in self._all_members()
                     if o is not m and o.alive and o.conn is not None and o.conn.instance is inst]
            if not peers:
                inst.reinitialize(self.timeout)
        pin = self._pin.get() if self._pin is not None else None
        conn = inst.call(open_connection, inst, m.serial, pin, timeout=self.timeout,
                         operation="C_OpenSession")
        with self._lock:
            m.instance = inst
            m.conn = conn
            m.state = MemberState.ALIVE
            m.down_since = None
            m.failure_reported = False
            m.last_error = None
        self.policy.member_up(m.serial)

    def recovery_tick(self) -> bool:
        """The origin pseudo-code; run before every call through the group.

        Returns True when a member was recovered.
        """
        if not self.policy.disconnected and not self._sync_due():
            return False
        if not self._recover_lock.acquire(blocking=False):
            return False  # another thread is recovering right now
        try:
            serial = self.policy.due()
            if serial is None:
                if self._sync_due():
                    self._sync_all()
                return False
            return self._recover(self._member(serial))
        finally:
            self._recover_lock.release()

    def _recover(self, m: Member, catch_up_inline: bool = False) -> bool:
        """One attempt on ``m``, recorded in the policy before anything else can
        mark the member down again (then it starts a fresh record).  Its catch-up
        runs on a thread of its own, or here with ``catch_up_inline``."""
        try:
            self._connect(m, clean=True)
        except Exception as e:
            self.policy.record(m.serial, False)
            self._log.event(self.label, m.serial, halog.RECOVERY_FAILED, ckr_name(e))
            with self._lock:
                m.conn = None
                m.state = MemberState.DOWN
            return False
        self.policy.record(m.serial, True)
        m.recoveries += 1
        self._log.event(self.label, m.serial, halog.RECOVERED, None)
        if catch_up_inline:
            self._after_recovery(m)
        else:
            self._start_catch_up(m)
        return True

    def _start_catch_up(self, m: Member) -> None:
        """Catch ``m`` up off the caller's path; until then the balancer sends it
        only what it holds (objects it lacks fail over to another member)."""
        if self._stop.is_set():
            return
        t = threading.Thread(target=self._after_recovery, args=(m,), daemon=True,
                             name=f"hacli-catch-up-{self.label}-{m.serial}")
        with self._lock:
            self._catch_up_threads = [x for x in self._catch_up_threads if x.is_alive()]
            self._catch_up_threads.append(t)
        t.start()

    def recover_now(self, serial: str | None = None) -> bool:
        """Attempt recovery of one down member immediately (``hagroup recover``)."""
        with self._recover_lock:
            down = self.policy.disconnected
            if serial is None:
                if not down:
                    return False
                serial = min(down.items(), key=lambda kv: kv[1])[0]
            m = self._member(serial)
            if m.alive:
                return True
            # an administrator's command, not an application call: it may wait
            # for the catch-up, and reports a member that failed during it
            return self._recover(m, catch_up_inline=True) and m.alive


__all__ = ["Recovery"]
