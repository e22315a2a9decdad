"""What the menu remembers between actions: the engine, open sessions, options.

No printing here; the actions and the loop say what happens.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacli.pins import FoundPin, PinRequest, Role, Source, find_pin, lab_pin_path

if TYPE_CHECKING:
    from hacli.conf.model_types import HAConfig
    from hacli.engine import Engine, VirtualSession
    from hacli.lab import Lab


@dataclass
class MenuState:
    """The menu's state.

    :param conf_path: the configuration file (found by discovery).
    :param load_config: builds the typed HA model of ``conf_path`` (on first use).
    :param lab_dir: the ``hacli`` section's ``LabDir`` when the group is a lab group.
    :param pin_file: ``--pin-file`` of ``hacli ckdemo``.
    :param so_pin_file: ``--so-pin-file`` of ``hacli ckdemo``.
    """

    conf_path: Path | None
    load_config: Callable[[], HAConfig]
    lab_dir: str | None = None
    pin_file: str | None = None
    so_pin_file: str | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    verbose: bool = False
    engine_: Engine | None = None
    sessions: dict[int, VirtualSession] = field(default_factory=dict)
    #: Last signature made with 42 Sign (43 Verify offers it).
    last_signature: bytes | None = None
    _lab: Lab | None = None

    # -- the engine --------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return self.engine_ is not None

    def init_engine(self) -> Engine:
        """50 HA Init: load the HA groups and connect to their members."""
        from hacli.engine import Engine

        if self.engine_ is None:
            self.engine_ = Engine(self.load_config())
        return self.engine_

    # -- sessions ------------------------------------------------------------
    def add_session(self, session: VirtualSession) -> None:
        self.sessions[session.handle] = session

    def close_session(self, handle: int) -> None:
        session = self.sessions.pop(handle)
        session.close()

    @property
    def last_session(self) -> int | None:
        return max(self.sessions) if self.sessions else None

    # -- lab and PINs ----------------------------------------------------------
    @property
    def lab(self) -> Lab | None:
        """The lab of a lab group (``LabDir`` in the ``hacli`` section), else None."""
        if self.lab_dir and self._lab is None:
            from hacli.lab import Lab

            self._lab = Lab(self.lab_dir)
        return self._lab

    def _pin_request(self, role: Role) -> PinRequest:
        return PinRequest(role, self.so_pin_file if role is Role.SO else self.pin_file,
                          self.lab_dir, self.environ)

    def configured_pin(self, role: Role = Role.USER) -> FoundPin | None:
        """A PIN given without a prompt (``--pin-file``/``--so-pin-file``, then
        ``HACLI_PIN``/``HACLI_SO_PIN``), with where it came from; the lab's
        PIN is not one (an empty answer at the prompt takes it)."""
        return find_pin(self._pin_request(role), (Source.FILE, Source.ENVIRONMENT))

    def lab_pin_file(self, role: Role = Role.USER) -> Path | None:
        """The lab's (SO) PIN file for a lab group, else None."""
        return lab_pin_path(self.lab_dir, role) if self.lab_dir else None

    def lab_pin(self, role: Role = Role.USER) -> str | None:
        """The lab's (SO) PIN for a lab group, else None."""
        found = find_pin(self._pin_request(role), (Source.LAB,))
        return found.pin if found is not None else None

    def known_pins(self) -> list[str]:
        """Every PIN the menu can know without a prompt (to hide them, never to print):
        ``--pin-file``, ``--so-pin-file``, ``HACLI_PIN``, ``HACLI_SO_PIN``, the lab's
        user and SO PINs.  Unreadable ones are left out (the action that needs one
        reports it)."""
        pins: list[str] = []
        for role in Role:
            for source in Source:
                with contextlib.suppress(Exception):
                    found = find_pin(self._pin_request(role), (source,))
                    pins.append(found.pin if found is not None else "")
        return [pin for pin in pins if pin]

    # -- shutdown --------------------------------------------------------------
    def close(self) -> None:
        """Close every session and the engine (idempotent, never raises)."""
        for handle in list(self.sessions):
            with contextlib.suppress(Exception):
                self.close_session(handle)
        self.sessions.clear()
        if self.engine_ is not None:
            with contextlib.suppress(Exception):
                self.engine_.close()
            self.engine_ = None


def find_lab_dir(get: Callable[[str, str], Any]) -> str | None:
    """``LabDir`` of the ``hacli`` section (``get`` is ``Document.get``)."""
    value = get("hacli", "LabDir")
    return str(value).strip() or None if value else None
