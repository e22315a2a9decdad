"""The lab's two configuration files: ``softhsm2.conf`` and ``Chrystoki.conf``.

Both are written once, when a lab is created (``Chrystoki.conf`` again only
if it went missing, so a user's edits survive a later ``up``).
"""

from __future__ import annotations

from hacli.lab.files import write_atomic
from hacli.lab.model import GROUP_LABEL, LabMember, group_serial_of
from hacli.lab.paths import LabPaths

SOFTHSM2_CONF_TEMPLATE = """\
# SoftHSM2 configuration of the hacli lab in {dir}
# (written by `hacli lab up`; see docs/lab.md).
# Every member's token lives in the token directory below; each member's
# `p11-kit server` exports only its own token.  To open the tokens directly:
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
# reached through its own copy of p11-kit's client module, loaded with the
# address of that member's server socket.
hacli = {{
{member_lines}   LabDir = {dir};
   # lab: p11-kit 0.24's RPC forwards no AES key-wrap mechanism, so members
   # cannot wrap keys under the transport key; lab keys are test keys, so they
   # may be replicated by value (in the clear, through this host's memory).
   # Never set this for keys that matter.
   ReplicateByValue = 1;
}}
"""


def write_softhsm2_conf(paths: LabPaths, module: str) -> None:
    """``softhsm2.conf``: every member's token in :attr:`LabPaths.tokens_dir`."""
    text = SOFTHSM2_CONF_TEMPLATE.format(
        dir=paths.directory,
        path=paths.softhsm2_conf,
        module=module,
        tokendir=paths.tokens_dir,
    )
    write_atomic(paths.softhsm2_conf, text, 0o644)


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
