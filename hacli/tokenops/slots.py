"""The slot list (numbered as the menu numbers it) and the ``--slot`` rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hacli.engine.exceptions import CKRError
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.engine import Engine, SlotInfo

#: ``--slot`` for the HA virtual slot.
HA = "ha"


@dataclass(frozen=True)
class SlotRecord:
    """One slot of the engine's list, with its token's label."""

    slot: SlotInfo
    label: str

    @property
    def ha(self) -> bool:
        return self.slot.kind == "ha"

    def as_dict(self) -> dict[str, Any]:
        s = self.slot
        return {"slot": s.slot_id, "description": s.description, "kind": s.kind,
                "label": self.label, "serial": s.token_serial, "group": s.group,
                "present": s.present}


def slot_list(engine: Engine) -> list[SlotRecord]:
    """Every slot: member slots first (none with ``HAOnly``), then one HA virtual
    slot per group -- the numbers the menu's slot list shows.  A member's token
    label is read from it (empty when the member is down)."""
    out = []
    for s in engine.slots():
        label = s.token_label
        if s.kind != "ha" and s.present:
            try:
                label = engine.token_info(s.slot_id).label.strip()
            except CKRError:  # went down since the list was made: no label to show
                label = ""
        out.append(SlotRecord(s, label))
    return out


def resolve(engine: Engine, spec: str | None, group: str | None = None) -> SlotInfo:
    """The slot ``--slot`` names: ``ha`` (the default) is the HA virtual slot of
    ``group``, else of the only (or first) group; a member's serial is that
    member's slot; another number is a slot number of :func:`slot_list`.

    UsageError for anything else, and for a slot outside ``group``.
    """
    slots = engine.slots()
    if spec is None or spec.strip().lower() == HA:
        if not engine.groups:
            raise UsageError("no HA group is configured")
        label = engine.group(group).label if group else engine.groups[0].label
        return next(s for s in slots if s.kind == "ha" and s.group == label)
    text = spec.strip()
    found = [s for s in slots if s.kind != "ha" and s.token_serial == text]
    if not found and text.isdigit():
        found = [s for s in slots if s.slot_id == int(text)]
    if not found:
        if any(text == m.serial for g in engine.groups for m in g.members):
            raise UsageError(f"member {text} has no slot: HAOnly hides member slots")
        numbers = ", ".join(str(s.slot_id) for s in slots)
        serials = ", ".join(s.token_serial for s in slots if s.kind != "ha")
        raise UsageError(f"--slot {spec!r} is not 'ha', a slot number ({numbers}) or a "
                         f"member serial ({serials or 'none shown'})")
    slot = found[0]
    if group and (slot.group or "").lower() != group.lower():
        raise UsageError(f"slot#{slot.slot_id} is not in HA group {group!r}")
    return slot


__all__ = ["HA", "SlotRecord", "resolve", "slot_list"]
