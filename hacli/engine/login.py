"""The login of a group: on every member, the PIN kept to log recovered members in.

The user (Crypto Officer) or the Security Officer logs in, on every member at
once; changing the logged-in role's PIN (``C_SetPIN``) is here too, because
this is the PIN holder.  The PIN lives only in a :class:`Secret`, whose
``repr`` is ``<secret>``; it is never put in a message, a log line or a report.

Collaborator: the group's :class:`~hacli.engine.members.MemberSet`.  What
happens around a login (the recovery tick before, the inventory after) is the
group's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from hacli.engine.ckr import CKR, ckr_name, is_member_failure
from hacli.engine.exceptions import CKRError, GroupDownError, request_error
from hacli.engine.member import MAPPER, Connection, Member
from hacli.engine.members import MemberSet


class Secret:
    """Holds the user PIN for re-login after recovery; never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class PinChangeError(CKRError):
    """``C_SetPIN`` (or ``C_InitPIN``) failed on one member of a group-wide change.

    :ivar changed: serials that keep the new PIN (changed, and changing them
        back failed too): they no longer share the group's PIN.
    :ivar restored: serials that were changed and are back on the old PIN.
    """

    def __init__(self, error: BaseException, member: str, changed: tuple[str, ...],
                 restored: tuple[str, ...], operation: str = "C_SetPIN"):
        self.changed = changed
        self.restored = restored
        parts = []
        if restored:
            parts.append(f"changed back on {', '.join(restored)}")
        if changed:
            parts.append(f"the new PIN stays on {', '.join(changed)}")
        super().__init__(ckr_name(error), operation, member,
                         detail="; ".join(parts) or "no member changed its PIN")


class Login:
    """Logging the user or the SO in and out of every member; the PIN holder."""

    def __init__(self, label: str, members: MemberSet):
        self.label = label
        self._members = members
        self._pin: Secret | None = None
        #: True while the Security Officer (not the user) is logged in.
        self._so = False

    def __repr__(self) -> str:
        who = "SO logged in" if self.so_logged_in else "logged in"
        return f"<Login {self.label} {who if self._pin is not None else 'logged out'}>"

    @property
    def logged_in(self) -> bool:
        """True while the user (Crypto Officer) is logged in (not the SO)."""
        return self._pin is not None and not self._so

    @property
    def so_logged_in(self) -> bool:
        """True while the Security Officer is logged in."""
        return self._pin is not None and self._so

    def pin(self) -> str | None:
        """The kept user PIN (to log a recovered member in), or None.

        None while the SO is logged in: a member recovered meanwhile comes
        back with nobody logged in (an SO session is a short administrative
        one; log out and in again to include it).
        """
        return self._pin.get() if self._pin is not None and not self._so else None

    def forget(self) -> None:
        """Drop the PIN (engine close)."""
        self._pin = None
        self._so = False

    def login(self, pin: str, so: bool = False) -> None:
        """Log in to every alive member with the same PIN (kept only to re-login
        recovered members; never shown); ``so``: as the Security Officer."""
        self._login(pin, so)

    def _login(self, pin: str, so: bool = False) -> None:
        if self._pin is not None:
            same = self._so == so
            raise CKRError(CKR.USER_ALREADY_LOGGED_IN if same
                           else CKR.USER_ANOTHER_ALREADY_LOGGED_IN, "C_Login")
        done: list[Member] = []

        def task(conn: Connection) -> None:
            if conn.login is None:
                conn.login = conn.token.open(rw=True, user_pin=None if so else pin,
                                             so_pin=pin if so else None,
                                             attribute_mapper=MAPPER)

        for m in self._members.serving():
            try:
                m.run(task, operation="C_Login")
                done.append(m)
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(m, e)
                    continue
                for d in done:
                    self._logout_member(d)
                raise request_error(e, "C_Login", m.serial) from e
        if not done:
            raise GroupDownError("C_Login", self.label)
        self._pin = Secret(pin)
        self._so = so

    def _logout_member(self, m: Member) -> None:
        def task(conn: Connection) -> None:
            if conn.login is not None:
                s, conn.login = conn.login, None
                s.close()

        self._members.best_effort(m, task, operation="C_Logout")

    def logout(self) -> None:
        """Log out of every member and forget the PIN."""
        if self._pin is None:
            raise CKRError(CKR.USER_NOT_LOGGED_IN, "C_Logout")
        self._pin = None
        self._so = False
        for m in self._members.serving():
            self._logout_member(m)

    def set_pin(self, old: str, new: str, only: Member | None = None) -> tuple[str, ...]:
        """``C_SetPIN`` on every member (``only``: on that one); returns the serials changed.

        It changes the PIN of the role logged in: the SO's while the SO is, else
        the user's.  All or nothing, as far as a token allows (see
        :meth:`_on_every_member`): when one member refuses, those already
        changed are changed back.  After a group-wide change the kept PIN (for
        recovered members) is the new one.
        """
        def task(conn: Connection, before: str, after: str) -> None:
            # the work session is R/W: C_SetPIN acts on the role logged in
            conn.work.set_pin(before, after)

        changed = self._on_every_member("C_SetPIN", only, lambda m: m.run(
            task, old, new, operation="C_SetPIN"), lambda m: m.run(
            task, new, old, operation="C_SetPIN"))
        if only is None and self._pin is not None:
            self._pin = Secret(new)
        return changed

    def init_pin(self, pin: str, only: Member | None = None) -> tuple[str, ...]:
        """``C_InitPIN`` (the SO sets the user's PIN) on every member (``only``:
        on that one); returns the serials set.  The SO must be logged in; a
        PIN set cannot be taken back, so a refusal leaves the members before
        it with the new PIN (:class:`PinChangeError` names them)."""
        if not self.so_logged_in:
            raise CKRError(CKR.USER_NOT_LOGGED_IN, "C_InitPIN",
                           detail="only the SO sets the user PIN: log in as SO first")

        def task(conn: Connection, new: str) -> None:
            conn.work.init_pin(new)

        return self._on_every_member("C_InitPIN", only, lambda m: m.run(
            task, pin, operation="C_InitPIN"), None)

    def _on_every_member(self, operation: str, only: Member | None,
                         change: Callable[[Member], None],
                         undo: Callable[[Member], None] | None) -> tuple[str, ...]:
        """``change`` on every member in turn (``only``: on that one), all or
        nothing as far as possible: every member must serve (one that is down
        would keep the old PIN, and the group could not log in to it after its
        recovery); when one refuses, ``undo`` runs on those already changed.
        :class:`PinChangeError` names the members changed back and those that
        keep the new PIN."""
        targets = [only] if only is not None else list(self._members)
        down = [m.serial for m in targets if not m.alive]
        if down:
            raise CKRError(CKR.DEVICE_ERROR, operation, down[0],
                           detail="not serving: it would keep the old PIN; change the PIN "
                                  "when every member serves")
        changed: list[Member] = []
        for m in targets:
            try:
                change(m)
            except Exception as e:
                if is_member_failure(e):
                    self._members.mark_failed(m, e)
                restored, kept = [], []
                for d in reversed(changed):
                    if undo is not None:
                        try:
                            undo(d)
                            restored.append(d.serial)
                            continue
                        except Exception:  # reported below: it keeps the new PIN
                            pass
                    kept.append(d.serial)
                raise PinChangeError(e, m.serial, tuple(kept), tuple(restored),
                                     operation) from e
            changed.append(m)
        return tuple(m.serial for m in changed)

    @contextlib.contextmanager
    def logged_in_for(self, pin: str | None, operation: str) -> Iterator[None]:
        """Run the block logged in: as the group is, else with ``pin`` (logged
        out again afterwards) -- comparing members needs private objects."""
        if self._so:
            raise CKRError(CKR.USER_ANOTHER_ALREADY_LOGGED_IN, operation,
                           detail="the SO is logged in: comparing members needs the user's "
                                  "private objects; log out first")
        if self._pin is not None:
            yield
            return
        if pin is None:
            raise CKRError(CKR.USER_NOT_LOGGED_IN, operation,
                           detail="comparing members needs the user PIN: private objects "
                                  "are invisible without a login")
        self._login(pin)
        try:
            yield
        finally:
            self.logout()


__all__ = ["Login", "PinChangeError", "Secret"]
