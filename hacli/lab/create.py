"""Making a new lab in a directory: all of it, or (on any failure) nothing.

The order matters: ``lab.json`` is written last, so its presence marks a
complete lab; everything made before it is undone when a later step fails.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from hacli.errors import LabError
from hacli.lab import servers
from hacli.lab.files import remove, write_secret
from hacli.lab.paths import LabPaths
from hacli.lab.state import new_state, save_state
from hacli.lab.templates import write_chrystoki_conf, write_softhsm2_conf
from hacli.lab.tokens import init_tokens
from hacli.lab.tools import LabTools


def create_lab(paths: LabPaths, count: int, tools: LabTools, timeout: float) -> dict[str, Any]:
    """Create *count* member tokens (each in its own token directory), PIN files,
    the members' ``softhsm2.conf`` and ``Chrystoki.conf``; start the servers.

    Returns the saved state.  Refuses a directory that holds part of a lab
    (its leftovers are for ``down --purge``, not for silent reuse).
    """
    leftovers = paths.own_entries()
    if leftovers:
        names = ", ".join(p.name for p in leftovers)
        raise LabError(
            f"{paths.directory} holds part of a lab ({names}) but no lab.json; "
            "remove it with `hacli lab down --purge`"
        )
    others = [p for p in paths.directory.iterdir() if p != paths.lock_file]
    made: list[Path] = []
    recs: list[dict[str, Any]] = []
    try:
        for i in range(count):
            # each member's own directory, token directory and SoftHSM2
            # configuration: no SoftHSM2 ever sees another member's files
            paths.member_dir(i).mkdir(mode=0o700)
            made.append(paths.member_dir(i))
            paths.tokens_dir_of(i).mkdir(mode=0o700)
            write_softhsm2_conf(paths, i, tools.softhsm2)
        paths.log_dir.mkdir(mode=0o755)
        made.append(paths.log_dir)
        # 24 hex digits = 96 bits; alphanumeric so it survives any shell.
        pin, so_pin = secrets.token_hex(12), secrets.token_hex(12)
        write_secret(paths.pin_file, pin)
        made.append(paths.pin_file)
        write_secret(paths.so_pin_file, so_pin)
        made.append(paths.so_pin_file)
        tokens = init_tokens(
            tools.softhsm2,
            [f"member{i}" for i in range(count)],
            pin,
            so_pin,
            [servers.server_env(paths, i) for i in range(count)],
            # initialising takes longer the more members there are
            timeout + 2.0 * count,
        )
        del pin, so_pin
        state = new_state(tokens, created_dir=not others)
        recs = state["members"]
        servers.start(paths, recs, tools, timeout)
        write_chrystoki_conf(paths, [paths.member_of(r) for r in recs], tools.p11kit_client)
        made.append(paths.conf_path)
        save_state(paths.state_file, state)  # last: lab.json marks a complete lab
    except BaseException:
        for rec in recs:
            servers.stop(paths, rec, timeout)
        for path in reversed(made):
            remove(path, ignore_errors=True)
        raise
    return state
