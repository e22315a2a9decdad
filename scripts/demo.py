#!/usr/bin/env python3
"""`make demo`: the main job on a fresh machine.

For now (until the lab and the menu land) it copies the example configuration
to a scratch directory and runs the lunacm-style commands on it, showing each
command and its output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HACLI = Path(sys.executable).parent / "hacli"


def run(*args: str, conf: Path) -> None:
    """Show and run one hacli command."""
    print(f"\n$ hacli --conf {conf.name} {' '.join(args)}", flush=True)
    subprocess.run([str(HACLI), "--conf", str(conf), *args], check=False)


def main() -> int:
    work = ROOT / "demo-work"
    work.mkdir(exist_ok=True)
    conf = work / "Chrystoki.conf"
    shutil.copyfile(ROOT / "docs" / "examples" / "Chrystoki.conf", conf)
    os.chdir(work)
    print(f"Scratch copy of docs/examples/Chrystoki.conf in {work}")
    run("hagroup", "listgroups", conf=conf)
    run("hagroup", "retry", "--interval", "60", "--count", "0", conf=conf)
    run("hagroup", "listgroups", conf=conf)
    print("\nWhat changed in the file:")
    subprocess.run(["diff", "-u", str(ROOT / "docs" / "examples" / "Chrystoki.conf"), str(conf)],
                   check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
