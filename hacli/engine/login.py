"""The user login of a group: on every member, the PIN kept to log recovered members in.

The PIN lives only in a :class:`Secret`, whose ``repr`` is ``<secret>``; it is
never put in a message, a log line or a report.

Uses from the other parts: ``recovery_tick`` (recovery.py), ``_after_login``
(sync.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hacli.engine.ckr import is_member_failure
from hacli.engine.exceptions import CKRError, GroupDownError, request_error
from hacli.engine.groupcore import GroupCore
from hacli.engine.member import MAPPER, Connection, Member


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


class Login(GroupCore):
    """Logging the user in and out of every member."""

    @property
    def logged_in(self) -> bool:
        return self._pin is not None

    def login(self, pin: str) -> None:
        """Log in to every alive member with the same PIN (kept only to re-login
        recovered members; never shown).

        Then the members are compared (inventory, ``needs_sync``) and, when the
        group's HASynchronize flag is set, synchronised; neither can fail the
        login.
        """
        self.recovery_tick()
        self._login(pin)
        self._after_login()

    def _login(self, pin: str) -> None:
        if self._pin is not None:
            raise CKRError("CKR_USER_ALREADY_LOGGED_IN", "C_Login")
        done: list[Member] = []

        def task(conn: Connection) -> None:
            if conn.login is None:
                conn.login = conn.token.open(rw=True, user_pin=pin, attribute_mapper=MAPPER)

        for m in self._alive_members():
            try:
                m.run(task, operation="C_Login")
                done.append(m)
            except Exception as e:
                if is_member_failure(e):
                    self._mark_failed(m, e)
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

        self._best_effort(m, task, operation="C_Logout")

    def logout(self) -> None:
        """Log out of every member and forget the PIN."""
        self.recovery_tick()
        if self._pin is None:
            raise CKRError("CKR_USER_NOT_LOGGED_IN", "C_Logout")
        self._pin = None
        for m in self.members:
            if m.alive:
                self._logout_member(m)

    @contextlib.contextmanager
    def _logged_in_for(self, pin: str | None, operation: str) -> Iterator[None]:
        """Run the block logged in: as the group is, else with ``pin`` (logged
        out again afterwards) -- comparing members needs private objects."""
        if self._pin is not None:
            yield
            return
        if pin is None:
            raise CKRError("CKR_USER_NOT_LOGGED_IN", operation,
                           detail="comparing members needs the user PIN: private objects "
                                  "are invisible without a login")
        self._login(pin)
        try:
            yield
        finally:
            self.logout()


__all__ = ["Login", "Secret"]
