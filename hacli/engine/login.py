"""The user login of a group: on every member, the PIN kept to log recovered members in.

The PIN lives only in a :class:`Secret`, whose ``repr`` is ``<secret>``; it is
never put in a message, a log line or a report.

Collaborator: the group's :class:`~hacli.engine.members.MemberSet`.  What
happens around a login (the recovery tick before, the inventory after) is the
group's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hacli.engine.ckr import CKR, is_member_failure
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


class Login:
    """Logging the user in and out of every member; the PIN holder."""

    def __init__(self, label: str, members: MemberSet):
        self.label = label
        self._members = members
        self._pin: Secret | None = None

    def __repr__(self) -> str:
        return f"<Login {self.label} {'logged in' if self.logged_in else 'logged out'}>"

    @property
    def logged_in(self) -> bool:
        return self._pin is not None

    def pin(self) -> str | None:
        """The kept PIN (to log a recovered member in), or None."""
        return self._pin.get() if self._pin is not None else None

    def forget(self) -> None:
        """Drop the PIN (engine close)."""
        self._pin = None

    def login(self, pin: str) -> None:
        """Log in to every alive member with the same PIN (kept only to re-login
        recovered members; never shown)."""
        self._login(pin)

    def _login(self, pin: str) -> None:
        if self._pin is not None:
            raise CKRError(CKR.USER_ALREADY_LOGGED_IN, "C_Login")
        done: list[Member] = []

        def task(conn: Connection) -> None:
            if conn.login is None:
                conn.login = conn.token.open(rw=True, user_pin=pin, attribute_mapper=MAPPER)

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
        for m in self._members.serving():
            self._logout_member(m)

    @contextlib.contextmanager
    def logged_in_for(self, pin: str | None, operation: str) -> Iterator[None]:
        """Run the block logged in: as the group is, else with ``pin`` (logged
        out again afterwards) -- comparing members needs private objects."""
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


__all__ = ["Login", "Secret"]
