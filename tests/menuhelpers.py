"""Drive the CKDemo-style menu (``hacli ckdemo``) in a child process.

:func:`spawn` starts it in a pseudo-terminal (pexpect) or with piped stdin and
stdout (``pexpect.popen_spawn``); :class:`Menu` chooses an option, gives the
answers and returns what the option printed and its status line's CKR name.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pexpect
from pexpect.popen_spawn import PopenSpawn

HACLI = str(Path(sys.executable).parent / "hacli")
CHOICE = "Enter your choice : "
STATUS = re.compile(r"Status: (.*) \((CKR_\w+)\)\r?\n")


@dataclass
class Outcome:
    """What one option printed (menu excluded) and its status line."""

    text: str
    ckr: str
    words: str

    def number(self, pattern: str) -> int:
        """The integer captured by ``pattern`` in the text (e.g. a handle)."""
        m = re.search(pattern, self.text)
        assert m, f"{pattern!r} not in:\n{self.text}"
        return int(m.group(1))


class Menu:
    """One running menu."""

    def __init__(self, child: Any):
        self.child = child
        self.child.expect_exact(CHOICE)

    def send(self, *lines: str) -> None:
        for line in lines:
            self.child.sendline(line)

    def run(self, option: int | str, *answers: str, timeout: float = 30) -> Outcome:
        """Choose ``option``, type ``answers`` ahead, wait for the status line."""
        self.send(str(option), *answers)
        return self.status(timeout)

    def status(self, timeout: float = 30) -> Outcome:
        self.child.expect(STATUS, timeout=timeout)
        text = self.child.before.decode() if isinstance(self.child.before, bytes) \
            else self.child.before
        words, ckr = (g.decode() if isinstance(g, bytes) else g
                      for g in self.child.match.groups())
        self.child.expect_exact(CHOICE, timeout=timeout)
        return Outcome(text.replace("\r\n", "\n"), ckr, words)

    def quit(self, answer: str = "0", timeout: float = 30) -> int:
        self.send(answer)
        return finish(self.child, timeout)


def finish(child: Any, timeout: float = 30) -> int:
    """Wait for the menu to exit; its exit status."""
    child.expect(pexpect.EOF, timeout=timeout)
    if isinstance(child, PopenSpawn):
        return child.wait()
    child.close()
    return child.exitstatus


def spawn(conf: Path | str, *args: str, tty: bool = True, env: dict[str, str] | None = None,
          cwd: Path | str | None = None) -> Any:
    """``hacli --conf CONF ckdemo ARGS`` in a pty (``tty``) or with pipes."""
    full = {**os.environ, "HACLI_PIN": "", **(env or {})}
    full.pop("HACLI_PIN") if not full.get("HACLI_PIN") else None
    argv = [HACLI, "--conf", str(conf), "ckdemo", *args]
    if tty:
        return pexpect.spawn(argv[0], argv[1:], env=full, cwd=cwd, encoding="utf-8",
                             timeout=30, dimensions=(60, 200))
    return PopenSpawn(argv, env=full, cwd=cwd, encoding="utf-8", timeout=30)
