"""The mechanisms the menu offers, per option and key type.

They are views of the one mechanism table (:mod:`hacli.tokenops.mechanisms`),
which the one-shot commands use too.  Only mechanisms the slot lists are
offered.  Where a token lacks a mechanism (SoftHSM2 has no
``CKM_ECDSA_SHA256``; p11-kit's RPC before 0.25 carries no
``CKM_AES_CBC_PAD``), hacli does the missing step itself and says so: it
hashes for ``CKM_ECDSA`` and pads for ``CKM_AES_ECB``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pkcs11 import Attribute, KeyType

from hacli.cli.menu.actions.common import Ctx, MenuError
from hacli.engine.ckr import CKR
from hacli.tokenops.mechanisms import MENU_VIEWS, Mech, Use

if TYPE_CHECKING:
    from hacli.engine import VirtualSession

SIGN = MENU_VIEWS[Use.SIGN]
ENCRYPT = MENU_VIEWS[Use.ENCRYPT]
WRAP = MENU_VIEWS[Use.WRAP]
DIGEST = MENU_VIEWS[Use.DIGEST]


def menu_label(mech: Mech) -> str:
    """The entry's label; the menu's files carry the IV in front of the ciphertext."""
    return f"{mech.label} (random IV at the start of the file)" if mech.iv else mech.label


def key_type_of(session: VirtualSession, handle: int) -> KeyType:
    return session.get_attribute(handle, Attribute.KEY_TYPE)


def choose_mechanism(ctx: Ctx, session: VirtualSession, table: tuple[Mech, ...],
                     key_type: KeyType | None = None) -> Mech:
    """The mechanisms of ``table`` for ``key_type`` that the slot lists; one is chosen."""
    fitting = [m for m in table if m.fits(key_type)]
    if not fitting:
        name = getattr(key_type, "name", key_type)
        raise MenuError(f"No mechanism of this option takes a CKK_{name} key.",
                        CKR.KEY_TYPE_INCONSISTENT)
    listed = set(session.mechanisms())
    offered = [m for m in fitting if m.mechanism in listed]
    if not offered:
        raise MenuError("The slot lists none of: " + ", ".join(m.label for m in fitting),
                        CKR.MECHANISM_INVALID)
    index = ctx.io.ask_choice("Mechanisms:", [menu_label(m) for m in offered],
                              "Select a mechanism")
    return offered[index]
