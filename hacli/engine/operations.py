"""Multi-part operations through a group: begun on the balancer's pick, moved on failure.

``C_xInit`` goes to the member the balancer picks (failing over while nothing
has started); every later step goes to that member.  When it fails, the
operation is begun again on a member that serves and fed its replay journal
(:mod:`hacli.engine.replay`), and the step runs there: the application sees
one operation.  Without a journal (past ``MultipartJournalBytes``, or a
session pinned to one member) the operation is over (``CKR_DEVICE_ERROR``)
and the session can begin a new one elsewhere.  The mechanics of driving
python-pkcs11 one step at a time are in :mod:`hacli.engine.multipart`.

Collaborators: the group's :class:`~hacli.engine.members.MemberSet`, its
:class:`~hacli.engine.execution.Executor` (an init is a call that fails over)
and ``tick`` (the recovery policy's hook).  Which sessions hold which
operations is the sessions' business: the group tells them when a member
fails, and they end their operations through :meth:`Operations.member_failed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from hacli.engine import halog, multipart
from hacli.engine.ckr import CKR, is_member_failure
from hacli.engine.exceptions import CKRError, ModuleUnavailable, request_error
from hacli.engine.execution import Executor
from hacli.engine.member import Connection, Member
from hacli.engine.members import MemberSet
from hacli.engine.multipart import MultiPart
from hacli.engine.objects import VObject
from hacli.engine.replay import ReplayJournal, ReplayMismatch

T = TypeVar("T")

LOG = logging.getLogger("hacli.engine")

_MEMBER_FAILED = "the member serving this multi-part operation failed"


class Operations:
    """Begin, step, replay and end the multi-part operations of a group's sessions.

    ``journal_bytes`` (``MultipartJournalBytes``) bounds each operation's
    replay journal; ``log`` gets a line when an operation moves to another
    member, and when one cannot (the reason is the event).
    """

    def __init__(self, label: str, members: MemberSet, executor: Executor,
                 tick: Callable[[], object], log: halog.HALog | halog.NullLog,
                 journal_bytes: int):
        self._label = label
        self._members = members
        self._executor = executor
        self._tick = tick
        self._log = log
        self._journal_bytes = journal_bytes

    def begin(self, operation: str, kind: str, vobj: VObject | None,
              mechanism: Any, param: Any, only: Member | None = None) -> MultiPart:
        """``C_xInit`` on the member the balancer picks (failing over while none
        has started); the operation stays on that member until it ends or the
        member fails (then :meth:`step` replays it elsewhere)."""
        op = self._place(operation, kind, vobj, mechanism, param, only)
        if only is None and op.deferred is None:
            # a pinned session has nowhere to move; a deferred verify runs
            # whole at its final, failing over like any single call
            op.journal = ReplayJournal(self._journal_bytes, kind in ("encrypt", "decrypt"))
        return op

    def _place(self, operation: str, kind: str, vobj: VObject | None,
               mechanism: Any, param: Any, only: Member | None) -> MultiPart:
        """``C_xInit`` on a member that serves: a new placement."""
        def task(m: Member, conn: Connection, *objs: Any) -> MultiPart:
            session = multipart.take_session(conn)
            try:
                target = (multipart.key_on(session, vobj.ident, objs[0].handle)
                          if vobj is not None else session)
                op = MultiPart(kind, m, conn, session,
                               key_handle=vobj.handle if vobj is not None else None,
                               vobj=vobj, mechanism=mechanism, param=param)
                if kind == "verify":
                    length = multipart.signature_length(target, mechanism)
                    if length is None:
                        # signature length unknown: keep the chunks, run the whole
                        # operation at verify_final (still C_VerifyInit/Update/Final)
                        op.deferred = []
                        op.deferred_args = (mechanism, param)
                        multipart.give_back(conn, session)
                        return op
                    op.sigbuf = bytearray(length)
                op.driver = multipart.StepDriver(
                    multipart.body_for(kind, target, mechanism, param, op.sigbuf),
                    name=f"hacli-op-{kind}-{m.serial}")
                op.driver.start(conn.instance)
                return op
            except BaseException:
                multipart.drop_session(session)
                raise

        return self._executor.execute(operation, task, [vobj] if vobj is not None else [],
                                      only)

    def step(self, op: MultiPart, operation: str,
             action: Callable[[MultiPart], T]) -> T:
        """Run one step of ``op`` (``action(op)`` on its member's worker).

        A member that failed since the operation began (or fails now) is
        replaced: the operation is begun again on a member that serves, its
        journal fed, and the step runs there.  Without a journal (past its
        bound, a pinned session) it is ``CKR_DEVICE_ERROR``: the operation is
        over, the session can start a new one.
        """
        self._tick()
        for _attempt in range(2 * len(self._members) + 1):
            try:
                return self._run_step(op, operation, action)
            except _MemberLost as lost:
                failed = lost.member
            except ReplayMismatch as e:
                self._mismatch(op, operation, e)
            self._replay(op, operation, failed)
        self._lost(op, operation, op.member, halog.MULTIPART_REPLAY_FAILED,
                   "members kept failing under this multi-part operation")

    def _run_step(self, op: MultiPart, operation: str,
                  action: Callable[[MultiPart], T]) -> T:
        """``action(op)`` on the member running ``op``; :class:`_MemberLost`
        when that member failed before or during it (marked down)."""
        m = op.member
        with self._members.lock:
            if op.dead is None and (m.conn is not op.conn or not m.alive):
                op.dead = CKR.DEVICE_ERROR
            dead = op.dead
            if dead is None:
                m.flight.append(None)
        if dead is not None:
            raise _MemberLost(m)
        ok = False

        def task(conn: Connection) -> T:
            if conn is not op.conn:
                raise ModuleUnavailable(m.serial, "connection replaced")
            return action(op)

        started = time.monotonic()
        try:
            result = m.run(task, operation=operation)
            ok = True
            return result
        except Exception as e:
            if is_member_failure(e):
                self._members.mark_failed(m, e)
                with self._members.lock:
                    op.dead = CKR.DEVICE_ERROR
                raise _MemberLost(m) from e
            if isinstance(e, multipart.OperationEnded) and op.dead is not None:
                # another call marked the member down after this step set
                # out, and its abort ended the operation first (soak finding)
                raise _MemberLost(m) from e
            if isinstance(e, ReplayMismatch):
                raise
            raise request_error(e, operation, m.serial) from e
        finally:
            self._members.balancer.done(m, ok, operation, time.monotonic() - started)

    def _replay(self, op: MultiPart, operation: str, failed: Member) -> None:
        """``op``'s member ``failed``: begin it again on a member that serves
        and feed it the journal (or ``CKR_DEVICE_ERROR`` when it cannot move)."""
        journal = op.journal
        if journal is None:
            self._lost(op, operation, failed, None, _MEMBER_FAILED)
        if not journal.replayable:
            why = (f"its input passed MultipartJournalBytes ({journal.limit} bytes)"
                   if journal.limit else "MultipartJournalBytes is 0 (no journal)")
            self._lost(op, operation, failed, halog.MULTIPART_JOURNAL_FULL,
                       f"{why}, so it cannot be replayed on another member")
        fn = multipart.FUNCTIONS[op.kind][0]
        try:
            new = self._place(fn, op.kind, op.vobj, op.mechanism, op.param, None)
        except CKRError as e:
            self._lost(op, operation, failed, halog.MULTIPART_REPLAY_FAILED,
                       f"no member could take it over ({e.ckr})", e)
        out: list[bytes] = []
        try:
            # one step per chunk, as the application fed them: each is bounded
            # by the command timeout on its own, however long the journal
            for chunk in journal.chunks or ():
                out.append(self._run_step(new, operation, _feeding(chunk)))
            journal.replayed(b"".join(out))
        except _MemberLost:
            # the member taking over failed too: the next round tries another
            self.member_failed(new, new.member)
            return
        except ReplayMismatch as e:
            self.abort(new)
            self._mismatch(op, operation, e)
        except BaseException:
            self.abort(new)
            raise
        with self._members.lock:
            op.move_to(new)
        LOG.info("%s: multi-part %s moved from %s to %s (%d bytes replayed)", self._label,
                 op.kind, failed.serial, new.member.serial, journal.size)
        self._log.event(self._label, failed.serial, halog.MULTIPART_REPLAYED, None)

    def _mismatch(self, op: MultiPart, operation: str, cause: ReplayMismatch) -> NoReturn:
        self._lost(op, operation, op.member, halog.MULTIPART_REPLAY_MISMATCH,
                   "the member that took over this multi-part operation produced other "
                   "output than the caller already received", cause)

    def _lost(self, op: MultiPart, operation: str, member: Member, event: str | None,
              detail: str, cause: BaseException | None = None) -> NoReturn:
        """The operation cannot go on: ``CKR_DEVICE_ERROR`` (``event``, why,
        to the HA log).  Where it still runs (a mismatch on a member that
        serves) it is ended there first."""
        self.abort(op)
        with self._members.lock:
            op.dead = CKR.DEVICE_ERROR
        if event is not None:
            LOG.warning("%s: multi-part %s on %s lost: %s", self._label, op.kind,
                        member.serial, detail)
            self._log.event(self._label, member.serial, event, CKR.DEVICE_ERROR)
        raise CKRError(CKR.DEVICE_ERROR, operation, member.serial, detail=detail) from cause

    def abort(self, op: MultiPart) -> None:
        """End ``op`` early on its member (never raises)."""
        if op.driver is None or op.driver.done:
            return
        m = op.member
        with self._members.lock:
            live = op.dead is None and m.conn is op.conn and m.alive
        if not live:
            return  # member_failed queued the abort already

        def task(conn: Connection) -> None:
            if conn is op.conn and op.driver is not None:
                op.driver.abort()
                multipart.drop_session(op.session)

        self._members.best_effort(m, task, operation="C_xFinal")

    def member_failed(self, op: MultiPart, member: Member) -> None:
        """``member`` was marked down (group lock held): end ``op`` there if
        it still runs there (a replay may have moved it meanwhile).

        The abort is queued on the member's worker behind the calls already
        queued (before any recovery re-initialises the module); nothing is
        queued when the instance was abandoned (see hacli.engine.multipart).
        """
        if op.member is not member:
            return
        op.dead = op.dead or CKR.DEVICE_ERROR
        if op.driver is not None and not op.driver.done:
            op.conn.instance.submit(op.driver.abort)


def _feeding(chunk: bytes) -> Callable[[MultiPart], bytes]:
    """A replay step: one journaled chunk fed to the member taking over."""
    return lambda o: multipart.feed_raw(o, chunk)


class _MemberLost(Exception):
    """The member running a multi-part operation failed (it is marked down)."""

    def __init__(self, member: Member):
        super().__init__(member.serial)
        self.member = member


class SessionOperations:
    """The multi-part operations of one virtual session, one per kind (PKCS#11).

    The session asks; this table keeps the state: which kind is active (or
    starting), the lock a step holds, what ends an operation (final, any
    error, the session closing, its member failing).
    """

    def __init__(self, operations: Operations):
        self._operations = operations
        #: active multi-part operations by kind (_STARTING while C_xInit runs)
        self._ops: dict[str, MultiPart | object] = {}
        self._lock = threading.Lock()

    def init(self, kind: str, fn: str, vobj: VObject | None, mechanism: Any, param: Any,
             only: Member | None, closed: Callable[[], bool]) -> None:
        """``C_xInit``: ``CKR_OPERATION_ACTIVE`` when one of this kind runs;
        the operation is begun on a member (see :meth:`Operations.begin`)."""
        with self._lock:
            if kind in self._ops:
                raise CKRError(CKR.OPERATION_ACTIVE, fn)
            self._ops[kind] = _STARTING
        try:
            op = self._operations.begin(fn, kind, vobj, mechanism, param, only)
        except BaseException:
            with self._lock:
                self._ops.pop(kind, None)
            raise
        with self._lock:
            if closed():  # closed while C_xInit ran
                self._ops.pop(kind, None)
                abort = True
            else:
                self._ops[kind] = op
                abort = False
        if abort:
            self._operations.abort(op)
            raise CKRError(CKR.SESSION_CLOSED, fn)

    def step(self, kind: str, fn: str, final: bool, action: Callable[[MultiPart], T]) -> T:
        """One ``C_xUpdate``/``C_xFinal`` of the active operation of ``kind``;
        final or any error ends it."""
        with self._lock:
            op = self._ops.get(kind)
        if not isinstance(op, MultiPart):
            raise CKRError(CKR.OPERATION_NOT_INITIALIZED, fn)
        with op.lock:
            with self._lock:
                if self._ops.get(kind) is not op:  # ended by another thread meanwhile
                    raise CKRError(CKR.OPERATION_NOT_INITIALIZED, fn)
            ended = final
            try:
                if op.deferred is not None:
                    return action(op)
                return self._operations.step(op, fn, action)
            except BaseException:
                ended = True  # an error ends the operation (PKCS#11)
                if op.driver is not None and not op.driver.done:
                    self._operations.abort(op)
                raise
            finally:
                if ended:
                    with self._lock:
                        if self._ops.get(kind) is op:
                            del self._ops[kind]

    def abort_all(self) -> None:
        """End every operation (the session closes, the engine closes)."""
        with self._lock:
            ops, self._ops = [o for o in self._ops.values() if isinstance(o, MultiPart)], {}
        for op in ops:
            self._operations.abort(op)

    def member_failed(self, member: Member) -> None:
        """``member`` was marked down: the operations running there are over
        (``CKR_DEVICE_ERROR`` at their next step)."""
        with self._lock:
            ops = [op for op in self._ops.values()
                   if isinstance(op, MultiPart) and op.member is member]
        for op in ops:
            self._operations.member_failed(op, member)

    def get(self, kind: str) -> MultiPart | None:
        """The active operation of ``kind`` (None while none, or while starting)."""
        with self._lock:
            op = self._ops.get(kind)
        return op if isinstance(op, MultiPart) else None

    def active(self) -> dict[str, str | None]:
        """Operations in progress: kind -> serial of the member serving it."""
        with self._lock:
            return {k: (op.member.serial if isinstance(op, MultiPart) else None)
                    for k, op in self._ops.items()}


_STARTING = object()

__all__ = ["Operations", "SessionOperations"]
