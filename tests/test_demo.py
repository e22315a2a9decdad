"""`make demo` (scripts/demo.py) as a newcomer runs it: the lab comes up, the menu opens."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pexpect
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


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def screen(output: str, rows: int = 24, columns: int = 80) -> list[str]:
    """What a ``rows`` x ``columns`` terminal shows after ``output``: its last rows,
    long lines wrapped (the menu and the guide move the cursor in no other way)."""
    lines: list[str] = []
    for line in _ANSI.sub("", output).replace("\r\n", "\n").split("\n"):
        line = line.split("\r")[-1]
        lines.extend(line[i:i + columns] for i in range(0, max(len(line), 1), columns))
    return lines[-rows:]


def test_demo_guide_is_on_a_24_line_screen_at_the_first_prompt(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm"}
    for name in ("HACLI_CONF", "ChrystokiConfigurationPath"):
        env.pop(name, None)
    child = pexpect.spawn(sys.executable, [str(ROOT / "scripts" / "demo.py")], env=env,
                          encoding="utf-8", timeout=120, dimensions=(24, 80))
    try:
        child.expect_exact("Enter your choice : ")
        shown = screen(child.before + child.after)
        assert shown[-1] == "Enter your choice : "
        text = "\n".join(shown)
        for step in ("52  HA Status", "120 Fail member", "122 Restore member", "0   Quit",
                     "answer 3, the HA slot"):
            assert step in text, text
        assert "(0) Quit demo" in text  # the menu's end is there too, above the guide
        child.sendline("0")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    finally:
        if child.isalive():
            child.terminate(force=True)
        lab_dir = tmp_path / "data" / "hacli" / "lab"
        assert run_process("lab", "down", "--purge", "--dir", str(lab_dir)).code == 0
