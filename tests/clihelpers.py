"""Helpers shared by the CLI tests: run hacli in-process or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from click.testing import CliRunner

from hacli.cli.main import main

HACLI = str(Path(sys.executable).parent / "hacli")
EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "Chrystoki.conf"


@dataclass
class Result:
    """What a hacli run produced."""

    code: int
    out: str
    err: str


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run ``hacli ARGS`` in-process through click's CliRunner and the real entry point."""
    runner = CliRunner()
    res = runner.invoke(_entry, list(args), env=env, input=input, catch_exceptions=False)
    return Result(res.exit_code, res.stdout, res.stderr)


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def _entry(args: tuple[str, ...]) -> None:
    # CliRunner needs a click command; this one hands every argument to the real
    # entry point, so the error table and exit codes are exercised too.
    main(list(args))


def run_process(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run the installed ``hacli`` console script as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([HACLI, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_error_line(res: Result, code: int) -> None:
    """The contract for failures: the exit code and exactly one ``Error:`` line."""
    assert res.code == code, (res.code, res.out, res.err)
    lines = [line for line in res.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.err
    assert "Traceback" not in res.err + res.out
