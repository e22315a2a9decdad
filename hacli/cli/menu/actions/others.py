"""OTHERS: 90 Self Test (known-answer checks on a slot), 98 Options."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from pkcs11 import Mechanism

from hacli.cli.menu.actions.common import Ctx, action, choose_slot, temporary_session
from hacli.cli.menu.actions.keys import KNOWN_KEYS, KnownKey, create_known
from hacli.engine.ckr import CKR

_SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _known_answer(session: Any, known: KnownKey) -> bool:
    handle = create_known(session, known)
    try:
        if known.mechanism == Mechanism.SHA256_HMAC:
            out = session.sign(handle, known.data, known.mechanism)
        else:
            out = session.encrypt(handle, known.data, known.mechanism)
    finally:
        session.destroy_object(handle)
    return out.hex() == known.answer


def _sha256_abc(session: Any) -> bool:
    return bool(session.digest(b"abc", Mechanism.SHA256).hex() == _SHA256_ABC)


def _random(session: Any) -> bool:
    a, b = session.generate_random(32), session.generate_random(32)
    return a != b and any(a) and any(b)


def checks(session: Any) -> list[tuple[str, Mechanism | None, Callable[[], bool]]]:
    """(name, mechanism the check needs, check) for one session."""
    out: list[tuple[str, Mechanism | None, Callable[[], bool]]] = [
        ("SHA-256 known answer (FIPS 180-4 'abc')", Mechanism.SHA256,
         functools.partial(_sha256_abc, session)),
    ]
    for known in KNOWN_KEYS:
        name = getattr(known.mechanism, "name", "")
        out.append((f"{name} known answer ({known.source})", known.mechanism,
                    functools.partial(_known_answer, session, known)))
    out.append(("Random numbers differ", None, lambda: _random(session)))
    return out


@action(90)
def self_test(ctx: Ctx) -> str | None:
    from hacli.engine import ckr_name

    slot = choose_slot(ctx)
    failed = False
    with temporary_session(ctx, slot) as session:
        listed = set(session.mechanisms())
        for name, mech, check in checks(session):
            if mech is not None and mech not in listed:
                result = "SKIPPED (mechanism not listed)"
            else:
                try:
                    ok = check()
                except Exception as e:  # one check's error does not stop the others
                    ok, result = False, f"ERROR {ckr_name(e)}"
                else:
                    result = "PASS" if ok else "FAIL"
                failed = failed or not ok
            ctx.say(f"  {name:<50} {result}")
    ctx.say(f"Self test of slot#{slot.slot_id}: {'FAILED' if failed else 'passed'}")
    return CKR.FIPS_SELF_TEST_FAILED if failed else None


@action(98)
def options(ctx: Ctx) -> None:
    state = ctx.state
    state.verbose = ctx.io.ask_yes_no(
        f"Verbose output (more detail on errors and HA status; now "
        f"{'on' if state.verbose else 'off'})", state.verbose)
    ctx.say(f"Verbose output is {'on' if state.verbose else 'off'}.")
