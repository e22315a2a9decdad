"""The lab: member HSMs as separate processes (SoftHSM2 tokens behind ``p11-kit server``).

>>> from hacli.lab import Lab
>>> lab = Lab("/tmp/mylab")
>>> status = lab.up(members=2)        # tokens, PIN files, Chrystoki.conf, servers
>>> lab.fail(status.members[0].serial)  # SIGKILL member0's process group
>>> lab.restore("member0")            # its server again: same socket, same token
>>> lab.down()                         # every process gone; tokens kept

No click or rich here: ``hacli lab ...`` (``hacli.cli.lab``) renders these.
See ``docs/lab.md`` (its last section maps the modules of this package).
"""

from hacli.lab.lab import Lab
from hacli.lab.model import (
    DEFAULT_MEMBERS,
    FAILED,
    GROUP_LABEL,
    HUNG,
    MAX_MEMBERS,
    RUNNING,
    STOPPED,
    LabMember,
    LabStatus,
    LabUsageError,
    MemberStatus,
)
from hacli.lab.tools import LabTools, find_tools

__all__ = [
    "DEFAULT_MEMBERS",
    "FAILED",
    "GROUP_LABEL",
    "HUNG",
    "MAX_MEMBERS",
    "RUNNING",
    "STOPPED",
    "Lab",
    "LabMember",
    "LabStatus",
    "LabTools",
    "LabUsageError",
    "MemberStatus",
    "find_tools",
]
