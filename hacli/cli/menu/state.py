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
    """

    conf_path: Path | None
    load_config: Callable[[], HAConfig]
    lab_dir: str | None = None
    pin_file: str | None = None
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

    def configured_pin(self) -> tuple[str, str] | None:
        """A PIN given without a prompt, and where it came from (never the PIN itself)."""
        if self.pin_file:
            text = Path(self.pin_file).read_text()
            return text.rstrip("\r\n"), f"--pin-file {self.pin_file}"
        if self.environ.get("HACLI_PIN"):
            return self.environ["HACLI_PIN"], "HACLI_PIN"
        return None

    def lab_pin(self) -> str | None:
        lab = self.lab
        return lab.pin() if lab is not None else None

    def known_pins(self) -> list[str]:
        """Every PIN the menu can know without a prompt (to hide them, never to print):
        ``--pin-file``, ``HACLI_PIN``, the lab's user and SO PINs.  Unreadable ones
        are left out (the action that needs one reports it)."""
        pins = [self.environ.get("HACLI_PIN", "")]
        readers: list[Callable[[], str | None]] = [
            lambda: (self.configured_pin() or ("", ""))[0], self.lab_pin,
            lambda: self.lab.so_pin() if self.lab is not None else None]
        for read in readers:
            with contextlib.suppress(Exception):
                pins.append(read() or "")
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
