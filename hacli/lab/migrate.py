"""An older lab's one token directory, split into the members' own (``up`` does it).

hacli versions before per-member token directories kept every member's token
in ``DIR/tokens`` with one ``DIR/softhsm2.conf``.  Every member's SoftHSM2 then
scanned every token at ``C_Initialize``, so a member frozen while holding a
file lock on its token blocked any new SoftHSM2 instance of every other
member (``docs/lab.md``, "Why one token directory per member").

:func:`split_shared_tokens` moves each member's token directory
(``DIR/tokens/<uuid>/``) into ``DIR/mN/tokens/`` with renames only (same file
system: nothing is copied, nothing rewritten), while no server of the lab runs.
Which member a token directory belongs to is asked of SoftHSM2 itself: the
directory is moved alone into a staging token directory and a probe child
reads its token's serial there.  An interrupted move is picked up by the next
``up``: a token is always in the shared directory, the staging directory or
its member's own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hacli.errors import LabError
from hacli.lab.files import remove, write_atomic
from hacli.lab.paths import LabPaths
from hacli.lab.tokens import read_tokens

#: The staging token directory, inside the shared one (SoftHSM2 skips it: no token.object).
STAGE = ".moving"


def token_dirs(tokendir: Path) -> list[Path]:
    """The SoftHSM2 tokens in a token directory: its subdirectories holding ``token.object``."""
    if not tokendir.is_dir():
        return []
    return sorted(
        p
        for p in tokendir.iterdir()
        if p.is_dir() and not p.is_symlink() and (p / "token.object").is_file()
    )


def shared_layout(paths: LabPaths, recs: list[dict[str, Any]]) -> bool:
    """True for an older lab: ``DIR/tokens`` is there, and a member has no token of its own."""
    return paths.shared_tokens_dir.is_dir() and any(
        not token_dirs(paths.tokens_dir_of(r["index"])) for r in recs
    )


def split_shared_tokens(
    paths: LabPaths, recs: list[dict[str, Any]], softhsm2: str, timeout: float
) -> list[str]:
    """Move each member's token from ``DIR/tokens`` into its own token directory.

    No server of the lab may run (the caller stops them).  A member that has
    a token of its own already keeps it; a token of no member (its serial is
    no member's) stays where it is, and so does ``DIR/tokens`` then, with
    the older ``softhsm2.conf``.  Otherwise both go.  Returns one note per
    change, for ``Updated: ...``.
    """
    shared = paths.shared_tokens_dir
    stage = shared / STAGE
    probe_conf = shared / f"{STAGE}.conf"
    if stage.is_dir():  # an interrupted move: its token goes back, and is moved again
        for tok in token_dirs(stage):
            os.rename(tok, shared / tok.name)
    else:
        stage.mkdir(mode=0o700)
    write_atomic(
        probe_conf,
        f"directories.tokendir = {stage}\nobjectstore.backend = file\nlog.level = ERROR\n",
        0o600,
    )
    by_serial = {r["serial"]: r for r in recs}
    notes: list[str] = []
    try:
        for tok in token_dirs(shared):
            staged = stage / tok.name
            os.rename(tok, staged)
            try:
                found = read_tokens(softhsm2, probe_conf, timeout)
            except LabError as exc:
                os.rename(staged, tok)
                raise LabError(f"cannot tell which member the token in {tok} is: {exc}") from None
            rec = by_serial.get(found[0]["serial"]) if len(found) == 1 else None
            if rec is None or token_dirs(paths.tokens_dir_of(rec["index"])):
                os.rename(staged, tok)
                continue
            paths.member_dir(rec["index"]).mkdir(mode=0o700, exist_ok=True)
            own = paths.tokens_dir_of(rec["index"])
            own.mkdir(mode=0o700, exist_ok=True)
            os.rename(staged, own / tok.name)
            notes.append(
                f"{rec['label']}: token moved from {tok} to {own / tok.name} (its own token "
                f"directory, in {paths.softhsm2_conf_of(rec['index'])})"
            )
    finally:
        remove(probe_conf)
        # no token left in it (a SoftHSM2 that scanned it may have left its
        # `generation` file): it goes
        if stage.is_dir() and not [p for p in stage.iterdir() if p.is_dir()]:
            remove(stage)
    remaining = sorted(p.name for p in shared.iterdir())
    if remaining:
        notes.append(
            f"{shared}: left as it is, with {paths.shared_softhsm2_conf.name}: it holds "
            f"{', '.join(remaining)}, no member's missing token"
        )
    else:
        shared.rmdir()
        existed = paths.shared_softhsm2_conf.exists()
        remove(paths.shared_softhsm2_conf)
        if existed:
            notes.append(
                f"{paths.shared_softhsm2_conf.name}: removed with {shared.name}/ (it opened "
                "every member's token; each member has its own now, mN/softhsm2.conf)"
            )
    return notes
