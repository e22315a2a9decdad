"""The lab's configuration files: each member's ``softhsm2.conf`` and ``Chrystoki.conf``.

They are written when a lab is created (a member's ``softhsm2.conf`` again
whenever it is missing; ``Chrystoki.conf`` again only if it went missing, so
a user's edits survive a later ``up``).  A
``Chrystoki.conf`` written by an older hacli is brought up to date in place by
:func:`update_chrystoki_conf`, through the lossless document editor: only the
lines it must change change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hacli.conf import store
from hacli.conf.document import Document
from hacli.errors import ConfError, LabError
from hacli.lab.files import write_atomic
from hacli.lab.model import GROUP_LABEL, LabMember, group_serial_of
from hacli.lab.paths import LabPaths

HACLI_SECTION = "hacli"

SOFTHSM2_CONF_TEMPLATE = """\
# SoftHSM2 configuration of {label}, member of the hacli lab in {dir}
# (written by `hacli lab up`; see docs/lab.md).
# {label}'s token, and nothing else, lives in the token directory below: every
# member has its own, so a frozen member's file locks never block another.
# {label}'s `p11-kit server` runs with this file.  To open the token directly:
#   SOFTHSM2_CONF={path} pkcs11-tool --module {module} -L
directories.tokendir = {tokendir}
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""

CHRYSTOKI_TEMPLATE = """\
# Chrystoki.conf of the hacli lab in {dir}
# Written once by `hacli lab up` (a later `up` keeps your edits).  The members
# are SoftHSM2 tokens, each served by its own `p11-kit server` process, so each
# can be crashed, frozen and restored: `hacli lab fail|hang|restore SERIAL`.
# Values marked "lab" are shorter than production defaults so that failover
# and recovery are quick to watch.  The user PIN is in {pin_file}, never here.

LunaSA Client = {{
   # lab: a frozen member costs 3 s per call; the production default is 20000.
   ReceiveTimeout = 3000;
}}

VirtualToken = {{
   VirtualToken00Label = {group};
   VirtualToken00SN = {group_serial};
   VirtualToken00Members = {member_list};
   VirtualTokenActiveRecovery = activeBasic;
}}

HASynchronize = {{
   {group} = 1;
}}

HAConfiguration = {{
   # lab: retry a failed member every 5 s; Luna clients need at least 60.
   AutoReconnectInterval = 5;
   # -1: retry forever.
   reconnAtt = -1;
   haLogStatus = enabled;
   haLogPath = {log_dir};
   logLen = 1000000;
}}

# hacli's own section: where each member's PKCS#11 module is.  Each member is
# reached through its own copy of the client module of the lab's p11-kit build
# (0.25.5 with hacli's AES key-wrap patch; see docs/lab.md), loaded with the
# address of that member's server socket.  Keys replicate wrapped under the
# group's transport key.
hacli = {{
{member_lines}   LabDir = {dir};
}}
"""

#: The hacli section's tail that hacli versions before the lab's own p11-kit
#: build wrote (they replicated lab keys by value); :func:`update_chrystoki_conf`
#: removes it with its comment where that is still word for word.
_OLD_BY_VALUE_BLOCK = re.compile(
    r"^[ \t]*# lab: p11-kit 0\.24's RPC forwards no AES key-wrap mechanism, so members\r?\n"
    r"[ \t]*# cannot wrap keys under the transport key; lab keys are test keys, so they\r?\n"
    r"[ \t]*# may be replicated by value \(in the clear, through this host's memory\)\.\r?\n"
    r"[ \t]*# Never set this for keys that matter\.\r?\n"
    r"[ \t]*ReplicateByValue[ \t]*=[ \t]*1[ \t]*;[ \t]*(?:\r?\n|\Z)",
    re.MULTILINE,
)
_CLIENT_NAME = "p11-kit-client.so"


def write_softhsm2_conf(paths: LabPaths, index: int, module: str) -> None:
    """Member *index*'s ``softhsm2.conf``: its token directory, :meth:`LabPaths.tokens_dir_of`."""
    path = paths.softhsm2_conf_of(index)
    text = SOFTHSM2_CONF_TEMPLATE.format(
        label=f"member{index}",
        dir=paths.directory,
        path=path,
        module=module,
        tokendir=paths.tokens_dir_of(index),
    )
    write_atomic(path, text, 0o644)


def write_chrystoki_conf(paths: LabPaths, members: list[LabMember], client: str) -> None:
    """``Chrystoki.conf``: the HA group of *members*, each reached through *client*."""
    lines = []
    for m in members:
        nn = f"{m.index:02d}"
        lines.append(f"   Member{nn}Serial = {m.serial};\n")
        lines.append(f"   Member{nn}Library = {client};\n")
        lines.append(f"   Member{nn}Environment = P11_KIT_SERVER_ADDRESS={m.address};\n")
    text = CHRYSTOKI_TEMPLATE.format(
        dir=paths.directory,
        pin_file=paths.pin_file,
        group=GROUP_LABEL,
        group_serial=group_serial_of(members[0].serial),
        member_list=",".join(m.serial for m in members),
        log_dir=paths.log_dir,
        member_lines="".join(lines),
    )
    write_atomic(paths.conf_path, text, 0o644)


def _updated(
    text: str, members: list[LabMember], client: str, path: str
) -> tuple[Document, list[str]]:
    """*text* as a document with the old lab settings replaced; one note per kind of change."""
    notes: list[str] = []
    text, removed = _OLD_BY_VALUE_BLOCK.subn("", text, count=1)
    doc = Document.parse(text, path)
    # Anywhere else in the section (a reworded comment, another value): the
    # line goes, comments around it stay.  The engine ignores the key.
    if doc.remove_key(HACLI_SECTION, "ReplicateByValue") or removed:
        notes.append(
            "removed ReplicateByValue (retired: keys replicate only wrapped under the "
            "group's transport key)"
        )
    moved: dict[str, list[str]] = {}
    for m in members:
        key = f"Member{m.index:02d}Library"
        old = doc.get(HACLI_SECTION, key)
        if old is not None and old != client and os.path.basename(old) == _CLIENT_NAME:
            doc.set(HACLI_SECTION, key, client)
            moved.setdefault(old, []).append(key)
    for old, keys in moved.items():
        notes.append(f"{', '.join(keys)}: {old} -> {client} (the lab's p11-kit build)")
    return doc, notes


def update_chrystoki_conf(paths: LabPaths, members: list[LabMember], client: str) -> list[str]:
    """Bring an older lab's ``Chrystoki.conf`` up to date; what changed, one note each.

    Two things an older hacli wrote are changed, nothing else: a member's
    ``MemberNNLibrary`` that names another ``p11-kit-client.so`` now names
    *client*, and the retired ``ReplicateByValue`` line of the ``hacli``
    section is removed (with the old template's comment above it when that
    is still word for word; other comments stay).  Every other byte of the
    file stays as it is (the edit goes through
    :class:`hacli.conf.document.Document`); the file is replaced atomically
    under the lock ``hacli hagroup`` edits take.  No change, no write.
    """
    path = paths.conf_path
    try:
        if not _updated(_text(path), members, client, str(path))[1]:
            return []
        with store.locked(path):  # the lock `hacli hagroup` edits take
            doc, notes = _updated(_text(path), members, client, str(path))  # again, locked
            if notes:
                store.save(doc, path)
    except ConfError as exc:
        raise LabError(f"cannot update {path}: {exc}") from None
    return [f"{path.name}: {note}" for note in notes]


def _text(path: Path) -> str:
    # store.load: the same decoding and errors as every other reader of the file
    return store.load(path).dumps().decode("utf-8")
