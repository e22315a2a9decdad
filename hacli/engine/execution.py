"""Running a call through a group: on one member with failover, or on each member.

A member failure (``ckr.is_member_failure``: the transport is gone) marks the
member down and the call moves on to another member; a request error goes
straight back to the caller and never marks a member down.  A *suspect* error
(``ckr.is_suspect``: ``CKR_GENERAL_ERROR``, which healthy tokens also give to
wrong requests) is asked of a second member: if the same call succeeds there,
the first member was sick and is marked down; if it fails there too, it was
the request's fault and goes back to the caller.  The member for a
single-part call comes from the balancer (balancer.py).

Collaborators: the group's :class:`~hacli.engine.members.MemberSet`, its
:class:`~hacli.engine.objects.ObjectRegistry`, and ``tick`` (the recovery
policy's hook, run before every call).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pkcs11

from hacli.engine.ckr import CKR, ckr_name, is_member_failure, is_suspect
from hacli.engine.exceptions import CKRError, GroupDownError, MemberBusy, request_error
from hacli.engine.member import Connection, Member
from hacli.engine.members import MemberSet
from hacli.engine.objects import NotOnMember, ObjectRegistry, VObject
from hacli.engine.replication import KEY_CLASSES

#: Errors after which the shared work session may still have an operation active.
LEAVES_OPERATION_ACTIVE = (CKR.BUFFER_TOO_SMALL, CKR.OPERATION_ACTIVE)


_NONE_TRIED: frozenset[Member] = frozenset()

T = TypeVar("T")


def retry_budget(timeout: float, elapsed: float) -> float:
    """How long a failover attempt may take after ``elapsed`` seconds of a call.

    The call as a whole keeps to the command timeout, except that a retry
    always gets a quarter of it (at least 0.25 s): a healthy member answers in
    milliseconds, so two frozen members cost a call at most 1.5 timeouts, not
    two, and a third, healthy member still serves it.  Past the budget a
    member is cut only if its server is seen stopped; one that runs keeps the
    call to its full timeout (see :meth:`ModuleInstance.call`).
    """
    return max(timeout - elapsed, min(timeout, max(0.25, timeout / 4.0)))


class Executor:
    """``execute`` (one member, failing over) and ``on_each`` (every member)."""

    def __init__(self, label: str, members: MemberSet, objects: ObjectRegistry,
                 tick: Callable[[], object]):
        self.label = label
        self._members = members
        self._objects = objects
        self._tick = tick

    def _attempt(self, conn: Connection, m: Member, fn: Callable[..., T],
                 vobjs: Sequence[VObject], args: tuple[Any, ...]) -> T:
        """One try of an :meth:`execute` call, inside the member's module."""
        try:
            if not vobjs:
                return fn(m, conn, *args)
            if len(vobjs) == 1:
                return fn(m, conn, self._objects.resolve(m, conn, vobjs[0]), *args)
            return fn(m, conn, *[self._objects.resolve(m, conn, v) for v in vobjs], *args)
        except pkcs11.PKCS11Error as e:
            if ckr_name(e) in LEAVES_OPERATION_ACTIVE:
                conn.rotate_work_session()
            raise

    def execute(self, operation: str, fn: Callable[..., T], vobjs: Sequence[VObject] = (),
                only: Member | None = None, args: tuple[Any, ...] = ()) -> T:
        """Run ``fn(member, conn, *real_objects, *args)`` on one member, failing over.

        The recovery policy runs first.  Member failures mark the member down
        and the call moves on; request errors go straight to the caller.
        """
        self._tick()
        tried: frozenset[Member] = _NONE_TRIED  # a set is made only on a failover
        missing = failed = False
        # (member, error) of a suspect error waiting for a second member's verdict
        suspect: tuple[Member, BaseException] | None = None
        # members a retry found busy with another call: tried again, waiting
        # behind that call, only when no other member is left
        busy: frozenset[Member] = _NONE_TRIED
        patient = False
        started = attempt_started = time.monotonic()
        while True:
            m = self._members.balancer.pick(tried, only, vobjs)
            if m is None and busy:
                tried, busy, patient = tried - busy, _NONE_TRIED, True
                continue
            if m is None:
                if suspect is not None:
                    raise request_error(suspect[1], operation, suspect[0].serial)
                serving = [m for m in self._members if m.alive and m.conn is not None]
                if not serving:
                    # no member serves: the group is down, whatever the call was
                    # (a handle error would tell the application its key is gone)
                    raise GroupDownError(operation, self.label)
                if vobjs and not failed and not any(
                        all(not v.absent_from(m.serial, m.conn.id) for v in vobjs)
                        for m in serving if m.conn is not None):
                    missing = True
                if missing and not failed:
                    code = (CKR.KEY_HANDLE_INVALID if any(v.cls in KEY_CLASSES for v in vobjs)
                            else CKR.OBJECT_HANDLE_INVALID)
                    raise CKRError(code, operation)
                raise GroupDownError(operation, self.label)
            ok = moved = False
            try:
                budget = (retry_budget(m.timeout, time.monotonic() - started)
                          if tried else None)
                # what _attempt returns: fn's result (run's T is not inferred
                # through the generic _attempt passed with untyped *args)
                result: T = m.run(self._attempt, m, fn, vobjs, args, operation=operation,
                                  timeout=budget, wait_behind=patient or budget is None)
                ok = True
                if suspect is not None:
                    # the same call served here: the first member was sick
                    self._members.mark_failed(suspect[0], suspect[1])
                return result
            except NotOnMember:
                tried = tried | {m}
                missing = True
            except MemberBusy:
                tried, busy = tried | {m}, busy | {m}
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(m, e)
                    tried = tried | {m}
                    failed = moved = True
                    continue
                if suspect is None and is_suspect(e):
                    suspect = (m, e)
                    tried = tried | {m}
                    continue
                if suspect is not None:
                    # failed on a second member too: the request's fault
                    raise request_error(suspect[1], operation, suspect[0].serial) from e
                raise request_error(e, operation, m.serial) from e
            finally:
                # one clock read per attempt: it ends this attempt, starts the next
                now = time.monotonic()
                self._members.balancer.done(m, ok, operation, now - attempt_started, moved)
                attempt_started = now

    def on_each(self, operation: str, fn: Callable[..., Any], vobj: VObject | None = None,
                only: Member | None = None) -> dict[str, Any]:
        """Run ``fn(member, conn[, obj])`` on every alive member; returns serial -> result.

        Members that fail are marked down (and need sync); members without the
        object are skipped; the first request error is raised after the others ran.
        A member giving a suspect error is marked down only when the call
        succeeded on another member; otherwise the error is the request's.
        """
        self._tick()
        results: dict[str, Any] = {}
        first_error: BaseException | None = None
        suspects: list[tuple[Member, BaseException]] = []
        targets = self._members.serving(only)
        if not targets:
            raise GroupDownError(operation, self.label)
        for m in targets:
            try:
                def task(conn: Connection, m: Member = m) -> Any:
                    if vobj is None:
                        return fn(m, conn)
                    return fn(m, conn, self._objects.resolve(m, conn, vobj))

                started = time.monotonic()
                results[m.serial] = m.run(task, operation=operation)
                self._members.balancer.count(m, True, operation, time.monotonic() - started)
            except NotOnMember:
                continue
            except Exception as e:
                self._members.balancer.count(m, False, operation, time.monotonic() - started)
                if is_member_failure(e):
                    self._members.mark_failed(m, e)
                    continue
                if is_suspect(e):
                    suspects.append((m, e))
                    continue
                first_error = first_error or request_error(e, operation, m.serial)
        for m, suspect_error in suspects:
            if results:
                self._members.mark_failed(m, suspect_error)  # the others served the call
            else:
                first_error = first_error or request_error(suspect_error, operation, m.serial)
        if first_error is not None:
            raise first_error
        if not results and not any(m.alive for m in targets):
            raise GroupDownError(operation, self.label)
        return results


__all__ = ["LEAVES_OPERATION_ACTIVE", "Executor"]
