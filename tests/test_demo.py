"""`make demo` (scripts/demo.py) as a newcomer runs it: the lab comes up, the menu opens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clihelpers import run_process

ROOT = Path(__file__).resolve().parent.parent


def test_demo_brings_the_lab_up_and_opens_the_menu(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    env.pop("HACLI_CONF", None)
    env.pop("ChrystokiConfigurationPath", None)
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")],
                              input="52\n3\n0\n", capture_output=True, text=True, env=env,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "The lab is up" in out
        assert "HIGH AVAILABILITY RECOVERY FUNCTIONS" in out
        assert "slot#3 - HA Virtual Card Slot" in out
        assert out.count(" - CKR_OK") == 2
        assert "Status: Doing great, no errors (CKR_OK)" in out
        assert "Traceback" not in proc.stderr
    finally:
        lab_dir = tmp_path / "data" / "hacli" / "lab"
        assert run_process("lab", "down", "--purge", "--dir", str(lab_dir)).code == 0
