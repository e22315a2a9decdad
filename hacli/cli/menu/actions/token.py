"""TOKEN FUNCTIONS: sessions, login, mechanisms, slot/token/session info, slot events."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from hacli.cli.menu.actions.common import (
    Ctx,
    MenuError,
    action,
    ask_pin,
    choose_session,
    choose_slot,
    slot_line,
    temporary_session,
    with_pin,
)
from hacli.cli.menu.prompts import BadAnswer
from hacli.engine.ckr import CKR
from hacli.pins import Role
from hacli.tokenops.mechanisms import ckm_name as mechanism_name
from hacli.tokenops.mechanisms import mechanism_record
from hacli.tokenops.slots import slot_list

#: CKDemo's user types for 3 Login, in its order (Luna: the SO, and the Crypto
#: Officer, PKCS#11's normal user).
USER_TYPES = (("SO", Role.SO), ("Crypto Officer", Role.USER))

# CK_TOKEN_INFO flags worth showing (PKCS#11 v2.40).
_TOKEN_FLAGS = (
    (0x1, "CKF_RNG"), (0x2, "CKF_WRITE_PROTECTED"), (0x4, "CKF_LOGIN_REQUIRED"),
    (0x8, "CKF_USER_PIN_INITIALIZED"), (0x20, "CKF_RESTORE_KEY_NOT_NEEDED"),
    (0x40, "CKF_CLOCK_ON_TOKEN"), (0x100, "CKF_PROTECTED_AUTHENTICATION_PATH"),
    (0x200, "CKF_DUAL_CRYPTO_OPERATIONS"), (0x400, "CKF_TOKEN_INITIALIZED"),
)


def flag_names(flags: int, table: tuple[tuple[int, str], ...]) -> str:
    names = [name for bit, name in table if flags & bit]
    return " | ".join(names) if names else "0"


def _version(v: Any) -> str:
    return f"{v[0]}.{v[1]}" if isinstance(v, tuple) else str(v)


@action(1)
def open_session(ctx: Ctx) -> None:
    slot = choose_slot(ctx)
    rw = ctx.io.ask_choice("Session type:", ["Read/Write", "Read-only"], "Select") == 0
    session = ctx.engine().open_session(slot.slot_id, rw=rw)
    ctx.state.add_session(session)
    ctx.say(f"Session opened on {slot_line(slot)}. Session handle: {session.handle}")


@action(2)
def close_session(ctx: Ctx) -> None:
    session = choose_session(ctx)
    ctx.state.close_session(session.handle)
    ctx.say(f"Session {session.handle} closed.")


def role_name(role: Role) -> str:
    """The user type's name as 3 Login offers it (``SO``, ``Crypto Officer``)."""
    return next(name for name, r in USER_TYPES if r is role)


@action(3)
def login(ctx: Ctx) -> None:
    session = choose_session(ctx)
    index = ctx.io.ask_choice("User type:", [name for name, _ in USER_TYPES],
                              "Select user type", default=2)
    name, role = USER_TYPES[index]
    with_pin(ctx, lambda pin: session.login(pin, so=role is Role.SO), role)
    ctx.say(f"Logged in as {name} (session {session.handle}, HA group {session.group.label}).")


@action(4)
def logout(ctx: Ctx) -> None:
    session = choose_session(ctx)
    session.logout()
    ctx.say(f"Logged out (HA group {session.group.label}).")


def _new_pin(ctx: Ctx, role: Role) -> str:
    """A new PIN typed twice (nothing goes to the token until both agree)."""
    while True:
        new = ctx.io.secret(f"Enter new {role.what}: ")
        if not new:
            ctx.say(f"A new {role.what} is needed (nothing was changed).")
            continue
        if ctx.io.secret(f"Re-enter new {role.what}: ") == new:
            return new
        ctx.say(f"The two new {role.what}s differ; enter them again (nothing was changed).")


@action(5)
def change_pin(ctx: Ctx) -> str | None:
    """C_SetPIN: on an HA session every member's PIN, all or nothing as far as
    the members allow; on a member session that member's."""
    from hacli.engine.login import PinChangeError

    session = choose_session(ctx)
    info = session.info()
    role = Role.SO if info.so_logged_in else Role.USER
    where = (f"member {info.member}" if info.member
             else f"every member of HA group {info.group}")
    ctx.say(f"Changing the {role.what} of {role_name(role)} on {where}.")
    old = ask_pin(ctx, role, f"current {role.what}")
    new = _new_pin(ctx, role)
    try:
        changed = session.set_pin(old, new)
    except PinChangeError as e:
        ctx.say(f"C_SetPIN failed on member {e.member} ({e.ckr}); {e.detail}.")
        return e.ckr
    ctx.say(f"{role.what} changed on {', '.join(changed)}.")
    if info.member:
        ctx.say(f"The other members of HA group {info.group} keep their {role.what}: the "
                "group logs in to every member with one PIN.")
    lab_file = ctx.state.lab_pin_file(role)
    if lab_file is not None:
        ctx.say(f"The lab's {role.what} file {lab_file} still holds the old one.")
    return None


@action(7)
def init_pin(ctx: Ctx) -> str | None:
    """C_InitPIN: the SO sets the user PIN (HA session: on every member)."""
    from hacli.engine.login import PinChangeError

    session = choose_session(ctx)
    info = session.info()
    if not info.so_logged_in:
        raise MenuError("Init Pin is the SO's: log in as SO first (3 Login, user type 1).",
                        CKR.USER_NOT_LOGGED_IN)
    where = f"member {info.member}" if info.member else f"every member of HA group {info.group}"
    ctx.say(f"Setting the user PIN (Crypto Officer) on {where}.")
    try:
        done = session.init_pin(_new_pin(ctx, Role.USER))
    except PinChangeError as e:
        ctx.say(f"C_InitPIN failed on member {e.member} ({e.ckr}); {e.detail}.")
        return e.ckr
    ctx.say(f"User PIN set on {', '.join(done)}.")
    return None


@action(6)
def init_token(ctx: Ctx) -> str | None:
    """C_InitToken on a member slot (every object on that token is erased)."""
    slot = choose_slot(ctx)
    if slot.kind == "ha":
        raise MenuError(f"Init Token on the HA slot would erase every member of HA group "
                        f"{slot.group}: initialise one member at a time on its member slot.",
                        CKR.FUNCTION_NOT_SUPPORTED)
    serial = slot.token_serial
    current = ctx.engine().token_info(slot.slot_id).label
    label = ctx.io.ask_text("Token label", current)
    if ctx.state.lab is not None and label != current:
        raise MenuError(f"A lab member keeps its label ({current}): its p11-kit server "
                        "exports the token by label.", CKR.ARGUMENTS_BAD)
    if not ctx.io.ask_yes_no(f"Erase every object on token {serial} (a member of HA group "
                             f"{slot.group})", False):
        ctx.say("Nothing was changed.")
        return CKR.FUNCTION_CANCELED
    so_pin = ask_pin(ctx, Role.SO)
    user_pin = ask_pin(ctx, Role.USER, f"{Role.USER.what} to set on the new token")
    back = ctx.engine().init_token(serial, so_pin, label, user_pin)
    ctx.say(f"Token {serial} initialised (label {label}); its user PIN is set.")
    if back:
        ctx.say(f"Member {serial} serves HA group {slot.group} again, without the group's "
                "objects: `hacli hagroup synchronize --adopt` copies them to it.")
        return None
    ctx.say(f"Member {serial} is down: the group could not log in to it (is the user PIN "
            "the group's?); the recovery policy tries it again.")
    return CKR.DEVICE_ERROR


@action(8)
def mechanism_list(ctx: Ctx) -> None:
    slot = choose_slot(ctx)
    with temporary_session(ctx, slot) as s:
        mechs = s.mechanisms()
    ctx.say(f"Mechanism list of slot#{slot.slot_id} ({len(mechs)} mechanisms):")
    for m in mechs:
        ctx.say(f"  {mechanism_name(m):<32} (0x{int(m):08X})")


def parse_mechanism(text: str) -> Any:
    """``CKM_SHA256``, ``SHA256``, ``0x250`` or ``592`` -> a Mechanism."""
    from pkcs11 import Mechanism

    t = text.strip()
    try:
        if t.lower().startswith("0x") or t.isdigit():
            value = int(t, 0)
            try:
                return Mechanism(value)
            except ValueError:
                return value
        name = t.upper().removeprefix("CKM_")
        return Mechanism[name]
    except (KeyError, ValueError):
        raise BadAnswer(f"'{text}' is not a mechanism; enter a CKM_ name (e.g. CKM_SHA256) "
                        "or a number (8 Mechanism List shows them).") from None


@action(9)
def mechanism_info(ctx: Ctx) -> None:
    slot = choose_slot(ctx)
    mech = ctx.io.ask("Enter mechanism (CKM_ name or number)", parse_mechanism)
    with temporary_session(ctx, slot) as s:
        info = mechanism_record(s, mech)
    ctx.say(f"Mechanism info of {mechanism_name(mech)} on slot#{slot.slot_id}:")
    ctx.say(f"  Min key size: {info.min_key_size}")
    ctx.say(f"  Max key size: {info.max_key_size}")
    ctx.say(f"  Flags:        {' | '.join(info.flag_names()) or '0'}")


@action(10)
def get_info(ctx: Ctx) -> None:
    from hacli import __version__

    engine = ctx.engine()
    ctx.say("Cryptoki version:    2.40")
    ctx.say("Manufacturer ID:     hacli")
    ctx.say("Library description: hacli HA engine (virtual HA slots over PKCS#11 members)")
    ctx.say(f"Library version:     {__version__}")
    ctx.say(f"Configuration:       {ctx.state.conf_path}")
    ctx.say(f"Number of slots:     {len(engine.slots())}")
    for g in engine.groups:
        ctx.say(f"HA group {g.label} (serial {g.serial}): members "
                f"{', '.join(m.serial for m in g.members)}")


@action(11)
def slot_info(ctx: Ctx) -> None:
    slot = choose_slot(ctx)
    flags = ["CKF_TOKEN_PRESENT"] if slot.present else []
    flags.append("CKF_REMOVABLE_DEVICE" if slot.kind == "ha" else "CKF_HW_SLOT")
    ctx.say(f"Slot info of slot#{slot.slot_id}:")
    ctx.say(f"  Slot description: {slot.description}")
    ctx.say("  Manufacturer ID:  hacli")
    ctx.say(f"  Flags:            {' | '.join(flags)}")
    ctx.say(f"  HA group:         {slot.group}")
    ctx.say(f"  Token serial:     {slot.token_serial}")


@action(12)
def token_info(ctx: Ctx) -> None:
    slot = choose_slot(ctx)
    info = ctx.engine().token_info(slot.slot_id)
    ctx.say(f"Token info of slot#{slot.slot_id}:")
    ctx.say(f"  Label:            {info.label}")
    ctx.say(f"  Manufacturer ID:  {info.manufacturer_id}")
    ctx.say(f"  Model:            {info.model}")
    ctx.say(f"  Serial number:    {info.serial}")
    ctx.say(f"  Flags:            {flag_names(info.flags, _TOKEN_FLAGS)}")
    ctx.say(f"  Hardware version: {_version(info.hardware_version)}")
    ctx.say(f"  Firmware version: {_version(info.firmware_version)}")
    if info.members:
        ctx.say(f"  HA members:       {', '.join(info.members)}")


@action(13)
def session_info(ctx: Ctx) -> None:
    info = choose_session(ctx).info()
    flags = "CKF_SERIAL_SESSION" + (" | CKF_RW_SESSION" if info.rw else "")
    ctx.say(f"Session info of session {info.handle}:")
    ctx.say(f"  Slot:   slot#{info.slot_id}" + (f" (member {info.member})" if info.member
                                                  else f" (HA group {info.group})"))
    ctx.say(f"  State:  {info.state}")
    ctx.say(f"  Flags:  {flags}")


@action(14)
def get_slot_list(ctx: Ctx) -> None:
    records = slot_list(ctx.engine())
    ctx.say(f"Number of slots: {len(records)}")
    for r in records:
        present = "token present" if r.slot.present else "no token"
        ctx.say(f"{slot_line(r.slot)} ({r.label or r.slot.token_serial}, {present})")


def _probe_slots(ctx: Ctx) -> dict[int, bool]:
    """Ask every slot for its token (noticing failures and recoveries); slot -> present."""
    engine = ctx.engine()
    for s in engine.slots():
        with contextlib.suppress(Exception):  # a missing token is what we watch for
            engine.token_info(s.slot_id)
    return {s.slot_id: s.present for s in engine.slots()}


@action(15)
def wait_for_slot_event(ctx: Ctx) -> str | None:
    timeout = ctx.io.ask_int("Timeout in seconds", 1, 3600, 10)
    before = _probe_slots(ctx)
    ctx.say(f"Waiting up to {timeout} s for a slot event (Ctrl-C to stop)...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        now = _probe_slots(ctx)
        changed = [sid for sid in now if now[sid] != before.get(sid)]
        if changed:
            slots = {s.slot_id: s for s in ctx.engine().slots()}
            for sid in changed:
                what = "token inserted" if now[sid] else "token removed"
                ctx.say(f"Slot event: {slot_line(slots[sid])}: {what}")
            return None
    ctx.say(f"No slot event within {timeout} s.")
    return CKR.NO_EVENT


__all__ = ["flag_names", "mechanism_name", "parse_mechanism"]
