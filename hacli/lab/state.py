"""``lab.json``: the lab's members (index, label, serial, server pid + start time).

The state is kept as the plain dict that is the file's JSON, so what is saved
is exactly what was loaded plus the pids a command changed.  It never holds a
PIN.  A member's *state* (running, hung, failed) is not stored here: it comes
from the process (:func:`hacli.lab.servers.state_of`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hacli.errors import LabError
from hacli.lab.files import write_atomic
from hacli.lab.model import GROUP_LABEL, LabUsageError, group_serial_of, names_member

STATE_VERSION = 1


def new_state(tokens: list[dict[str, str]], created_dir: bool) -> dict[str, Any]:
    """The state of a new lab whose tokens (``{"label", "serial"}``, in order) have no server yet.

    *created_dir*: the lab made its directory, so purging it deletes the directory.
    """
    records = [
        {
            "index": i,
            "label": t["label"],
            "serial": t["serial"],
            "pid": None,
            "start_time": None,
        }
        for i, t in enumerate(tokens)
    ]
    return {
        "version": STATE_VERSION,
        "group": GROUP_LABEL,
        "group_serial": group_serial_of(str(records[0]["serial"])),
        "created_dir": created_dir,
        "members": records,
    }


def load_state(path: Path) -> dict[str, Any]:
    """The state in *path* (the lab's directory is its parent), or a one-line LabError."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab in {path.parent} (run `hacli lab up`)") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"cannot read {path}: {exc}") from None
    if state.get("version") != STATE_VERSION or not state.get("members"):
        raise LabError(f"{path} is not a lab state file this hacli understands")
    return state


def save_state(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(state, indent=2) + "\n", 0o644)


def find_record(state: dict[str, Any], which: str) -> dict[str, Any]:
    """The member record named by serial or label, or a LabUsageError listing the valid ones."""
    which = str(which).strip()
    for rec in state["members"]:
        if names_member(which, rec["serial"], rec["label"]):
            return rec
    valid = ", ".join(f"{r['serial']} ({r['label']})" for r in state["members"])
    raise LabUsageError(f"no lab member {which!r}; members: {valid}")
