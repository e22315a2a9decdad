"""The one PIN reader (hacli/pins.py) and its users: the CLI, the menu, the lab."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from clihelpers import assert_one_error_line, run
from menuhelpers import HACLI

from hacli.errors import LabError, UsageError
from hacli.lab import Lab
from hacli.pins import (
    SOURCES,
    PinFileError,
    PinRequest,
    Role,
    Source,
    find_pin,
    read_pin_file,
)


def pin_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_sources_are_one_table_in_order(tmp_path: Path) -> None:
    assert [source for source, _ in SOURCES] == [Source.FILE, Source.ENVIRONMENT, Source.LAB]
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    pin_file(lab_dir / "pin", "lab-user")
    pin_file(lab_dir / "so-pin", "lab-so")
    given = pin_file(tmp_path / "given", "from-file\nsecond line\n")
    env = {"HACLI_PIN": "from-env", "HACLI_SO_PIN": "so-from-env"}

    def found(role: Role, file: Path | None, environ: dict[str, str],
              sources: tuple[Source, ...] = tuple(Source)) -> tuple[str, str] | None:
        hit = find_pin(PinRequest(role, file, lab_dir, environ), sources)
        return (hit.pin, hit.source) if hit is not None else None

    assert found(Role.USER, given, env) == ("from-file", f"--pin-file {given}")
    assert found(Role.USER, None, env) == ("from-env", "HACLI_PIN")
    assert found(Role.USER, None, {}) == ("lab-user", f"the lab's PIN file {lab_dir / 'pin'}")
    assert found(Role.SO, None, env) == ("so-from-env", "HACLI_SO_PIN")
    assert found(Role.SO, None, {"HACLI_PIN": "x"})[0] == "lab-so"
    assert found(Role.USER, None, env, (Source.LAB,))[0] == "lab-user"
    assert found(Role.USER, None, {"HACLI_PIN": ""}, (Source.FILE, Source.ENVIRONMENT)) is None
    # a found PIN never shows in its repr
    assert "from-env" not in repr(find_pin(PinRequest(environ=env)))


def test_a_pin_file_open_to_others_gets_one_warning(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    secret = "s3cret-open"
    path = pin_file(tmp_path / "open-pin", secret + "\n", 0o644)
    assert read_pin_file(path) == secret
    assert read_pin_file(path) == secret  # read again: no second warning
    err = capsys.readouterr().err
    assert err == (f"Warning: PIN file {path} has mode 0644: others than its owner can read "
                   f"or change it (chmod 600 {path})\n")
    assert secret not in err
    # ssh's rule: any permission for group or others; none for 0600 or 0400
    for mode, warned in ((0o640, True), (0o620, True), (0o604, True), (0o600, False),
                         (0o400, False)):
        other = pin_file(tmp_path / f"pin-{mode:o}", "x", mode)
        read_pin_file(other, Role.SO)
        err = capsys.readouterr().err
        assert (f"SO PIN file {other}" in err) is warned, (oct(mode), err)


@pytest.mark.parametrize("text", ["", "\n", "   \n", "\nsecond-line-is-not-read\n"])
def test_an_empty_pin_file_is_refused(tmp_path: Path, text: str) -> None:
    path = pin_file(tmp_path / "empty", text)
    with pytest.raises(PinFileError, match="is empty; no login was tried") as err:
        read_pin_file(path)
    assert isinstance(err.value, UsageError)  # exit status 2 in the CLI
    with pytest.raises(PinFileError, match="cannot read a PIN from"):
        read_pin_file(tmp_path / "missing")


def test_the_lab_reads_its_pins_through_the_same_reader(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    with pytest.raises(LabError, match=r"no lab in .*\(pin is missing\)"):
        lab.pin()
    pin_file(lab.pin_file, "")
    with pytest.raises(PinFileError, match="is empty"):
        lab.pin()
    pin_file(lab.so_pin_file, "lab-so-pin")
    assert lab.so_pin() == "lab-so-pin"


# ---------------------------------------------------------------------------
# the CLI and the menu


def test_cli_refuses_an_empty_pin_file_and_warns_about_an_open_one(lab, tmp_path: Path) -> None:
    conf = str(lab.conf_path)
    empty = pin_file(tmp_path / "empty-pin", "\n")
    res = run("--conf", conf, "hagroup", "listgroups", "--pin-file", str(empty))
    assert_one_error_line(res, 2)
    assert f"the PIN file {empty} is empty; no login was tried" in res.err
    assert res.out == ""  # refused before anything was probed or logged in
    open_pin = pin_file(tmp_path / "open-pin", lab.pin() + "\n", 0o644)
    res = run("--conf", conf, "hagroup", "listgroups", "--pin-file", str(open_pin))
    assert res.code == 0, res.err
    warnings = [line for line in res.err.splitlines() if line.strip()]
    assert warnings == [f"Warning: PIN file {open_pin} has mode 0644: others than its owner "
                        f"can read or change it (chmod 600 {open_pin})"]
    assert lab.pin() not in res.out + res.err


def test_menu_refuses_an_empty_pin_file_before_it_opens(lab, tmp_path: Path) -> None:
    empty = pin_file(tmp_path / "empty-so-pin", "")
    proc = subprocess.run([HACLI, "--conf", str(lab.conf_path), "ckdemo", "--so-pin-file",
                           str(empty)], input="3\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr == f"Error: the SO PIN file {empty} is empty; no login was tried\n"
    assert "Enter your choice" not in proc.stdout


def test_menu_warns_once_about_an_open_pin_file(lab, tmp_path: Path) -> None:
    open_pin = pin_file(tmp_path / "open-pin", lab.pin(), 0o660)
    env = {k: v for k, v in os.environ.items() if k != "HACLI_PIN"}
    # two logins with the file's PIN: one warning line for the file
    answers = "1\n3\n1\n3\n\n\n4\n\n3\n\n\n0\n"
    proc = subprocess.run([HACLI, "--conf", str(lab.conf_path), "ckdemo", "--pin-file",
                           str(open_pin)], input=answers, capture_output=True, text=True,
                          env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("Status: Doing great, no errors (CKR_OK)") == 4, proc.stdout
    assert proc.stderr == (f"Warning: PIN file {open_pin} has mode 0660: others than its "
                           f"owner can read or change it (chmod 600 {open_pin})\n")
    assert lab.pin() not in proc.stdout + proc.stderr
