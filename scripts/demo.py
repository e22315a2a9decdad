#!/usr/bin/env python3
"""`make demo`: the main job on a fresh machine.

Brings the lab up (two SoftHSM2 member HSMs, each behind its own `p11-kit
server` process) if it is not, then opens the CKDemo-style menu on its HA
group.  Inside the menu, 52 shows the HA status and 120-123 crash, freeze and
restore members: the origin document's scenario in one terminal.

The guide to that scenario is shown by the menu itself, after the menu and
before its first prompt (`hacli ckdemo --guide`): the menu is longer than a
24-line terminal, so a guide printed before it would have scrolled away.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HACLI = str(Path(sys.executable).parent / "hacli")

#: Short enough to stay on a 24-line terminal under the menu's last lines,
#: with the prompt; no line longer than 79 columns (none wraps).
GUIDE = """\
------------------------------------------------------------------------------
The lab is up: HA group "labgroup" over {n} member HSMs.  Try the origin
document's scenario (answer {ha}, the HA slot, when asked for a slot):
  52  HA Status               both members CKR_OK
  120 Fail member             crash one: SIGKILL its server
  52  HA Status, twice        CKR_DEVICE_ERROR, then CKR_TOKEN_NOT_PRESENT
  122 Restore member          wait 5 s (the lab's retry interval), then 52:
                              both CKR_OK again
  0   Quit                    the lab stays up: `hacli lab down` stops it
------------------------------------------------------------------------------"""


def main() -> int:
    up = subprocess.run([HACLI, "lab", "up", "--json"], capture_output=True, text=True,
                        check=False)
    if up.returncode != 0:
        sys.stderr.write(up.stderr)
        return up.returncode
    import json

    status = json.loads(up.stdout)
    subprocess.run([HACLI, "lab", "status"], check=False)
    if not sys.stdin.isatty():
        print("(stdin is not a terminal: the menu reads one answer per line from it)")
    sys.stdout.flush()  # before exec replaces this process and its buffers
    os.execv(HACLI, [HACLI, "--conf", status["conf"], "ckdemo", "--guide",
                     GUIDE.format(n=len(status["members"]),
                                                  ha=len(status["members"]) + 1)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
