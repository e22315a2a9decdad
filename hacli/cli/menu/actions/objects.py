"""OBJECT MANAGEMENT FUNCTIONS: create (data objects), copy, destroy, size,
get/set attributes, find and display objects — all by virtual handle."""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, ObjectClass

from hacli.cli.menu.actions.common import (
    Ctx,
    action,
    choose_object,
    choose_session,
    class_name,
    read_data,
)
from hacli.cli.menu.prompts import BadAnswer, parse_hex
from hacli.tokenops.objects import (
    attribute_name,
    format_value,
    object_summary,
    read_attributes,
)

#: Attributes 25 Set attribute can change, and how their value is typed.
TEXT_ATTRS = (Attribute.LABEL, Attribute.APPLICATION)
HEX_ATTRS = (Attribute.ID,)
BOOL_ATTRS = (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN, Attribute.VERIFY,
              Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE, Attribute.SENSITIVE,
              Attribute.PRIVATE, Attribute.MODIFIABLE)


def parse_attribute(text: str) -> Attribute:
    t = text.strip()
    try:
        if t.lower().startswith("0x") or t.isdigit():
            return Attribute(int(t, 0))
        return Attribute[t.upper().removeprefix("CKA_")]
    except (KeyError, ValueError):
        raise BadAnswer(f"'{text}' is not an attribute; enter a CKA_ name (e.g. CKA_LABEL) "
                        "or a number.") from None


def value_size(value: Any) -> int:
    """Bytes an attribute value takes (CK_ULONG for numbers, CK_BBOOL for flags)."""
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    return 8


@action(20)
def create_object(ctx: Ctx) -> None:
    session = choose_session(ctx)
    label = ctx.io.ask_text("Label of the data object", "hacli-data")
    value = read_data(ctx, "object's value")
    token = ctx.io.ask_yes_no("Store on the token", False)
    template = {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: label,
                Attribute.APPLICATION: "hacli", Attribute.VALUE: value, Attribute.TOKEN: token,
                Attribute.PRIVATE: session.group.logged_in}
    handle = session.create_object(template)
    ctx.say(f"Data object created ({len(value)} bytes). Object handle: {handle}")


@action(21)
def copy_object(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    old = read_attributes(session, handle, (Attribute.LABEL,)).get(Attribute.LABEL) or "object"
    label = ctx.io.ask_text("Label of the copy", f"{old}-copy")
    new = session.copy_object(handle, {Attribute.LABEL: label})
    ctx.say(f"Object {handle} copied. New object handle: {new}")


@action(22)
def destroy_object(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    session.destroy_object(handle)
    ctx.say(f"Object {handle} destroyed.")


@action(23)
def object_size(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    attrs = read_attributes(session, handle)
    size = sum(value_size(v) for v in attrs.values())
    ctx.say(f"Object size of {handle}: {size} bytes "
            f"(sum of its {len(attrs)} readable attributes)")


@action(24)
def get_attribute(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    attr = ctx.io.ask("Enter attribute (CKA_ name or number)", parse_attribute, "CKA_LABEL")
    value = session.get_attribute(handle, attr)
    ctx.say(f"{attribute_name(attr)} = {format_value(value)}")


def _attribute_value(ctx: Ctx, attr: Attribute) -> Any:
    if attr in TEXT_ATTRS:
        return ctx.io.ask_text(f"New value of {attribute_name(attr)}")
    if attr in HEX_ATTRS:
        return ctx.io.ask(f"New value of {attribute_name(attr)} (hex)", parse_hex)
    return ctx.io.ask_yes_no(f"New value of {attribute_name(attr)}")


def _settable(text: str) -> Attribute:
    attr = parse_attribute(text)
    if attr not in TEXT_ATTRS + HEX_ATTRS + BOOL_ATTRS:
        names = ", ".join(attribute_name(a) for a in TEXT_ATTRS + HEX_ATTRS + BOOL_ATTRS)
        raise BadAnswer(f"{attribute_name(attr)} cannot be set from the menu; one of: {names}")
    return attr


@action(25)
def set_attribute(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    attr = ctx.io.ask("Enter attribute to set (CKA_ name)", _settable, "CKA_LABEL")
    value = _attribute_value(ctx, attr)
    session.set_attributes(handle, {attr: value})
    ctx.say(f"{attribute_name(attr)} of object {handle} set to {format_value(value)}")


_CLASSES = (ObjectClass.DATA, ObjectClass.SECRET_KEY, ObjectClass.PUBLIC_KEY,
            ObjectClass.PRIVATE_KEY, ObjectClass.CERTIFICATE)


@action(26)
def find_object(ctx: Ctx) -> None:
    session = choose_session(ctx)
    how = ctx.io.ask_choice("Find:", ["all objects", "by label", "by class"], "Select")
    template: dict[Any, Any] = {}
    if how == 1:
        template[Attribute.LABEL] = ctx.io.ask_text("Label")
    elif how == 2:
        index = ctx.io.ask_choice("Class:", [class_name(c) for c in _CLASSES], "Select")
        template[Attribute.CLASS] = _CLASSES[index]
    session.find_objects_init(template)
    try:
        handles: list[int] = []
        while batch := session.find_objects_next(10):
            handles.extend(batch)
    finally:
        session.find_objects_final()
    ctx.say(f"Found {len(handles)} object(s):")
    for h in handles:
        ctx.say(f"  handle {h} - {object_summary(session, h)}")


@action(27)
def display_object(ctx: Ctx) -> None:
    session = choose_session(ctx)
    handle = choose_object(ctx, session)
    ctx.say(f"Object {handle}:")
    for attr, value in read_attributes(session, handle).items():
        shown = "<sensitive>" if value is None else format_value(value)
        ctx.say(f"  {attribute_name(attr):<24} {shown}")
