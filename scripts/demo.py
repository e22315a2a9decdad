#!/usr/bin/env python3
"""`make demo`: the main job on a fresh machine.

Brings the lab up (two SoftHSM2 member HSMs, each behind its own `p11-kit
server` process) if it is not, then opens the CKDemo-style menu on its HA
group.  Inside the menu, 52 shows the HA status and 120-123 crash, freeze and
restore members: the origin document's scenario in one terminal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HACLI = str(Path(sys.executable).parent / "hacli")

GUIDE = """
The lab is up: HA group "labgroup" over {n} member HSMs.
In the menu, try the origin document's scenario:
  52  HA Status               (both members CKR_OK)
  120 Fail member             (crash one: SIGKILL its server)
  52  HA Status, twice        (CKR_DEVICE_ERROR, then CKR_TOKEN_NOT_PRESENT)
  122 Restore member, wait 5 s (the lab's retry interval), 52 again: both CKR_OK
  0   Quit                    (the lab stays up: `hacli lab down` stops it)
"""


def main() -> int:
    up = subprocess.run([HACLI, "lab", "up", "--json"], capture_output=True, text=True,
                        check=False)
    if up.returncode != 0:
        sys.stderr.write(up.stderr)
        return up.returncode
    import json

    status = json.loads(up.stdout)
    subprocess.run([HACLI, "lab", "status"], check=False)
    print(GUIDE.format(n=len(status["members"])))
    if not sys.stdin.isatty():
        print("(stdin is not a terminal: the menu reads one answer per line from it)")
    os.execv(HACLI, [HACLI, "--conf", status["conf"], "ckdemo"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
