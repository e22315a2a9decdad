"""What the actions share: the registry, and the slot, session, object, data
and PIN prompts (CKDemo's questions), built on :mod:`hacli.cli.menu.prompts`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hacli.cli.menu.prompts import BadAnswer, Prompter
from hacli.cli.menu.state import MenuState
from hacli.engine.ckr import CKR
from hacli.pins import Role

if TYPE_CHECKING:
    from hacli.engine import Engine, SlotInfo, VirtualSession


@dataclass
class Ctx:
    """What an action gets: the menu's state and its input/output."""

    state: MenuState
    io: Prompter

    def say(self, text: str = "") -> None:
        self.io.say(text)

    def engine(self) -> Engine:
        """The engine; options used before 50 HA Init initialise it implicitly."""
        if not self.state.initialised:
            engine = self.state.init_engine()
            self.say(f"(HA Init: {len(engine.groups)} HA group(s) from {self.state.conf_path})")
        assert self.state.engine_ is not None
        return self.state.engine_


class MenuError(Exception):
    """An action cannot go on: a message, then the status line with ``ckr``."""

    def __init__(self, message: str, ckr: str):
        super().__init__(message)
        self.ckr = ckr


#: An action returns None (CKR_OK) or the CKR name for the status line.
Action = Callable[[Ctx], "str | None"]
ACTIONS: dict[int, Action] = {}


def action(number: int) -> Callable[[Action], Action]:
    """Register a function as menu option ``number``."""
    def register(fn: Action) -> Action:
        ACTIONS[number] = fn
        return fn

    return register


# -- slots ------------------------------------------------------------------
def slot_line(slot: SlotInfo) -> str:
    return f"slot#{slot.slot_id} - {slot.description}"


def choose_slot(ctx: Ctx, ha_only: bool = False) -> SlotInfo:
    """CKDemo's slot question: ``Slots available:``, one line a slot, ``Select a slot:``."""
    slots = ctx.engine().slots()
    if not slots:
        raise MenuError(f"No slots: no HA group is configured in {ctx.state.conf_path}.",
                        CKR.SLOT_ID_INVALID)
    ctx.say("Slots available:")
    for s in slots:
        ctx.say(slot_line(s))
    by_id = {s.slot_id: s for s in slots}

    def parse(text: str) -> SlotInfo:
        try:
            slot = by_id[int(text)]
        except (ValueError, KeyError):
            raise BadAnswer(f"'{text}' is not a slot; enter one of "
                            f"{', '.join(map(str, by_id))}.") from None
        if ha_only and slot.kind != "ha":
            raise BadAnswer(f"slot#{slot.slot_id} is not an HA Virtual Card Slot; choose "
                            "an HA slot.")
        return slot

    return ctx.io.ask("Select a slot", parse)


def temporary_session(ctx: Ctx, slot: SlotInfo) -> VirtualSession:
    """A session for a slot-level question (closed by the caller's ``with``)."""
    return ctx.engine().open_session(slot.slot_id, rw=True)


# -- sessions -----------------------------------------------------------------
def session_label(handle: int, session: VirtualSession) -> str:
    info = session.info()
    where = f"member {info.member}" if info.member else f"HA group {info.group}"
    return f"{handle} (slot#{info.slot_id} {where})"


def choose_session(ctx: Ctx) -> VirtualSession:
    """``Enter session handle`` among the open sessions (default: the last opened)."""
    sessions = ctx.state.sessions
    if not sessions:
        raise MenuError("No session is open: open one with 1 (Open Session) first.",
                        CKR.SESSION_HANDLE_INVALID)
    ctx.say("Open sessions: " + ", ".join(str(h) for h in sorted(sessions)))

    def parse(text: str) -> VirtualSession:
        try:
            return sessions[int(text)]
        except (ValueError, KeyError):
            raise BadAnswer(f"'{text}' is not an open session handle; enter one of "
                            f"{', '.join(map(str, sorted(sessions)))}.") from None

    return ctx.io.ask("Enter session handle", parse, str(ctx.state.last_session))


# -- objects ------------------------------------------------------------------
def class_name(cls: Any) -> str:
    name = getattr(cls, "name", None)
    return f"CKO_{name}" if name else str(cls)


def choose_object(ctx: Ctx, session: VirtualSession, prompt: str = "Enter object handle",
                  classes: Iterable[Any] | None = None) -> int:
    """A virtual object handle known to the session's group (and of a wanted class)."""
    wanted = tuple(classes) if classes is not None else None

    def parse(text: str) -> int:
        try:
            handle = int(text)
            cls = session.object_class(handle)
        except ValueError:
            raise BadAnswer(f"'{text}' is not a handle; enter a number "
                            "(26 Find object lists them).") from None
        except Exception:
            raise BadAnswer(f"No object has handle {text} (26 Find object lists them).") \
                from None
        if wanted is not None and cls not in wanted:
            kinds = " or ".join(class_name(c) for c in wanted)
            raise BadAnswer(f"Handle {handle} is a {class_name(cls)}; this needs a {kinds}.")
        return handle

    return ctx.io.ask(prompt, parse)


# -- data -----------------------------------------------------------------------
def read_data(ctx: Ctx, what: str = "data") -> bytes:
    """CKDemo asks where data comes from: a file, or text typed now."""
    source = ctx.io.ask_choice(f"Where does the {what} come from?",
                               ["typed text", "a file"], "Select")
    if source == 0:
        return ctx.io.ask_text(f"Enter the {what}").encode()
    path = ctx.io.ask_file("File name")
    return path.read_bytes()


def write_output(ctx: Ctx, data: bytes, prompt: str, default: str) -> Path:
    path = ctx.io.ask_output_file(prompt, default)
    write_file(ctx, path, data)
    return path


def write_file(ctx: Ctx, path: Path, data: bytes) -> None:
    """Write ``data`` atomically (as the one-shot commands' ``--out``) and say so."""
    from hacli.conf.store import write_atomic

    write_atomic(path, data)
    ctx.say(f"Wrote {len(data)} bytes to {path}")


def hexdump(data: bytes, limit: int = 64) -> str:
    text = data[:limit].hex()
    return text + ("..." if len(data) > limit else "")


# -- PINs -----------------------------------------------------------------------
def ask_pin(ctx: Ctx, role: Role = Role.USER, what: str | None = None,
            configured: bool = True) -> str:
    """A PIN of ``role``: a configured one (``configured``), else a hidden prompt.

    For a lab group an empty answer takes the lab's PIN; otherwise an empty
    answer is asked again (nothing was sent to the token).  The PIN is never
    printed (the prompter hides it wherever it turns up, see
    :meth:`Prompter.hide`).
    """
    name = what or role.what
    if configured:
        found = ctx.state.configured_pin(role)
        if found is not None:
            ctx.io.hide(found.pin)
            ctx.say(f"Using the {name} from {found.source}.")
            return found.pin
    lab_pin = ctx.state.lab_pin(role)
    ctx.io.hide(lab_pin)
    prompt = f"Enter {name} (empty: the lab's {role.what}): " if lab_pin else f"Enter {name}: "
    while True:
        pin = ctx.io.secret(prompt)
        if pin:
            return pin
        if lab_pin:
            return lab_pin
        ctx.say(f"A {name} is needed (nothing was sent to the token).")


def with_pin(ctx: Ctx, login: Callable[[str], None], role: Role = Role.USER) -> None:
    """Call ``login(pin)`` once with the PIN of :func:`ask_pin`.

    A wrong PIN is not asked for again: on a real HSM every failed login
    counts towards the lockout of the role, so the menu makes one attempt
    and the status line says what the token answered.
    """
    login(ask_pin(ctx, role))
