"""The CKDemo-style menu in a real pseudo-terminal, on the lab's HA group.

The origin document's transcript: option 52 on the HA slot shows both members
``CKR_OK``; after a member fails, the first 52 shows it ``CKR_DEVICE_ERROR``,
the next ``CKR_TOKEN_NOT_PRESENT`` (the other ``CKR_OK``, the status line
``Doing great``); after restore and the recovery interval both are ``CKR_OK``
again.  A key generated with 45 signs (42) and verifies (43) while either
member is down.  The lab section (120-123) drives the failures from the menu.
"""

from __future__ import annotations

import io
import shutil
import time

import pytest
from clihelpers import run
from menuhelpers import CHOICE, Menu, Outcome, finish, spawn

pytestmark = pytest.mark.lab

ORIGIN_MENU = """\
TOKEN FUNCTIONS
( 1) Open Session ( 2) Close Session ( 3) Login
( 4) Logout ( 5) Change PIN ( 6) Init Token
( 7) Init Pin ( 8) Mechanism List ( 9) Mechanism Info
(10) Get Info (11) Slot Info (12) Token Info
(13) Session Info (14) Get Slot List (15) Wait for Slot Event
(16) InitToken(ind)(17) InitPin (ind) (18) Login (ind)
(19) CloneMofN
OBJECT MANAGEMENT FUNCTIONS
(20) Create object (21) Copy object (22) Destroy object
(23) Object size (24) Get attribute (25) Set attribute
(26) Find object (27) Display Object
SECURITY FUNCTIONS
(40) Encrypt file (41) Decrypt file (42) Sign
(43) Verify (44) Hash file (45) Simple Generate Key
(46) Digest Key
HIGH AVAILABILITY RECOVERY FUNCTIONS
(50) HA Init (51) HA Login (52) HA Status
KEY FUNCTIONS
(60) Wrap key (61) Unwrap key (62) Generate random number
(63) Derive Key (64) PBE Key Gen (65) Create known keys
(66) Seed RNG (67) EC User Defined Curves
CA FUNCTIONS
(70) Set Domain (71) Clone Key (72) Set MofN
(73) Generate MofN (74) Activate MofN (75) Generate Token Keys
(76) Get Token Cert(77) Sign Token Cert(78) Generate CertCo Cert
(79) Modify MofN (86) Dup. MofN Keys (87) Deactivate MofN
CCM FUNCTIONS
(80) Module List (81) Module Info (82) Load Module
(83) Load Enc Mod (84) Unload Module (85) Module function Call
OTHERS
(90) Self Test (94) Open Access (95) Close Access
(97) Set App ID (98) Options
OFFBOARD KEY STORAGE:
(101) Extract Masked Object (102) Insert Masked Object
(103) Multisign With Value (104) Clone Object
(105) SIMExtract (106) SIMInsert
(107) SimMultiSign
SCRIPT EXECUTION:
(108) Execute Script
(109) Execute Asynchronous Script
(110) Execute Single Part Script
"""


def squeeze(text: str) -> list[str]:
    """Lines with runs of white space folded (the origin document folds them)."""
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def ha_status(menu: Menu) -> dict[str, str]:
    """Option 52 on the HA slot (slot#3): member serial -> CKR status, plus the line."""
    out = menu.run(52, "3")
    lines = squeeze(out.text)
    assert "Slots available:" in lines
    assert "slot#3 - HA Virtual Card Slot" in lines
    codes = {}
    for line in lines:
        if line.startswith("HSM "):
            serial, code = line[4:].split(" - ")
            codes[serial] = code
    codes["status"] = f"{out.words} ({out.ckr})"
    return codes


def login(menu: Menu, pin: str) -> Outcome:
    """3 Login as Crypto Officer with a PIN typed at the hidden prompt."""
    menu.send("3", "", "")
    menu.child.expect_exact("Enter PIN (empty: the lab's PIN): ")
    menu.child.sendline(pin)
    return menu.status()


def sign_and_verify(menu: Menu, public: int, private: int, text: str) -> None:
    signed = menu.run(42, "", str(private), "1", "1", text, "")
    assert signed.ckr == "CKR_OK", signed.text
    verified = menu.run(43, "", str(public), "1", "1", text, "")
    assert verified.ckr == "CKR_OK", verified.text
    assert "Signature verified: it is valid." in verified.text


def lab_member(menu: Menu, option: int, index: int, state: str) -> None:
    out = menu.run(option, str(index))
    assert out.ckr == "CKR_OK", out.text
    assert f"is {state}." in out.text


def wait_both_ok(menu: Menu, serials: tuple[str, str], timeout: float = 25.0) -> None:
    """Repeat 52 until both members are CKR_OK (recovery after the interval)."""
    deadline = time.monotonic() + timeout
    while True:
        codes = ha_status(menu)
        if all(codes[s] == "CKR_OK" for s in serials):
            return
        assert time.monotonic() < deadline, f"no recovery within {timeout} s: {codes}"
        time.sleep(0.5)


def test_origin_transcript_and_failover(healthy_lab, tmp_path) -> None:
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    group = lab.group_serial
    log = io.StringIO()
    child = spawn(lab.conf_path, tty=True, cwd=tmp_path)
    child.logfile_read = log
    menu = Menu(child)
    # the menu: the origin document's sections, numbers and names, then the lab's
    shown = squeeze(child.before)
    assert shown[: len(squeeze(ORIGIN_MENU))] == squeeze(ORIGIN_MENU)
    assert "LAB FUNCTIONS (hacli lab):" in shown and shown[-1] == "(0) Quit demo"

    ok = "Doing great, no errors (CKR_OK)"
    assert ha_status(menu) == {m0: "CKR_OK", m1: "CKR_OK", "status": ok}
    assert f"HA group {group} status:" in child.before + log.getvalue()

    session = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    assert session > 0
    assert login(menu, lab.pin()).ckr == "CKR_OK"
    # a token object: a crashed member loses its session objects, and in the lab
    # (p11-kit 0.24, no AES key wrap) the engine cannot copy them back
    keys = menu.run(45, "", "2", "origin-rsa", "y", "2048")
    public = keys.number(r"Public key handle: (\d+)")
    private = keys.number(r"private key handle: (\d+)")

    # the origin document: a member fails; first DEVICE_ERROR, then TOKEN_NOT_PRESENT
    lab_member(menu, 120, 1, "failed")
    assert ha_status(menu) == {m0: "CKR_DEVICE_ERROR", m1: "CKR_OK", "status": ok}
    assert ha_status(menu) == {m0: "CKR_TOKEN_NOT_PRESENT", m1: "CKR_OK", "status": ok}
    sign_and_verify(menu, public, private, "signed while member0 is down")

    lab_member(menu, 122, 1, "running")
    wait_both_ok(menu, (m0, m1))

    lab_member(menu, 120, 2, "failed")
    sign_and_verify(menu, public, private, "signed while member1 is down")
    assert ha_status(menu)[m1] == "CKR_DEVICE_ERROR"  # its first report
    lab_member(menu, 122, 2, "running")
    for handle in (public, private):
        assert menu.run(22, "", str(handle)).ckr == "CKR_OK"

    assert menu.quit() == 0
    transcript = log.getvalue()
    assert lab.pin() not in transcript
    assert "Traceback" not in transcript


def test_ctrl_c_and_end_of_input(lab, tmp_path) -> None:
    child = spawn(lab.conf_path, tty=True, cwd=tmp_path)
    menu = Menu(child)
    # Ctrl-C at a prompt inside an action: back to the menu
    child.sendline("52")
    child.expect_exact("Select a slot: ")
    child.sendintr()
    out = menu.status()
    assert out.ckr == "CKR_FUNCTION_CANCELED"
    # Ctrl-C while an action runs (15 waits for a slot event)
    child.sendline("15")
    child.expect_exact("Timeout in seconds [10]: ")
    child.sendline("30")
    child.expect_exact("Waiting up to 30 s")
    child.sendintr()
    assert menu.status(timeout=10).ckr == "CKR_FUNCTION_CANCELED"
    # a hidden PIN prompt: what is typed is not echoed
    child.sendline("51")
    child.expect_exact("Select a slot: ")
    child.sendline("3")
    child.expect_exact("Enter PIN (empty: the lab's PIN): ")
    child.sendline("not-the-pin-42")
    out = menu.status()  # one attempt: a wrong PIN is not asked for again
    assert out.ckr == "CKR_PIN_INCORRECT"
    assert "not-the-pin-42" not in out.text and "Enter PIN" not in out.text
    # Ctrl-C at the hidden PIN prompt: back to the menu, nothing sent to the token
    child.sendline("51")
    child.expect_exact("Select a slot: ")
    child.sendline("3")
    child.expect_exact("Enter PIN (empty: the lab's PIN): ")
    child.sendintr()
    assert menu.status().ckr == "CKR_FUNCTION_CANCELED"
    # end of input (Ctrl-D) at the menu quits with status 0
    child.sendeof()
    assert finish(child) == 0
    assert "Traceback" not in child.before


def test_a_pin_at_an_ordinary_prompt_is_not_quoted(lab, tmp_path) -> None:
    """Issue 8, item 12 in a terminal: the PIN typed where a slot is asked for is shown
    only by the terminal's own echo of the typing, never by the menu's message; typed
    at the PIN prompt it is not shown at all."""
    pin = lab.pin()
    log = io.StringIO()
    child = spawn(lab.conf_path, tty=True, cwd=tmp_path)
    child.logfile_read = log
    menu = Menu(child)
    child.sendline("52")
    child.expect_exact("Select a slot: ")
    child.sendline(pin)
    child.expect(r"\r\n(.*) is not a slot")
    assert child.match.group(1) == "'<hidden>'"
    child.sendline("3")
    assert menu.status().ckr == "CKR_OK"
    child.sendline("51")
    child.expect_exact("Select a slot: ")
    child.sendline("3")
    child.expect_exact("Enter PIN (empty: the lab's PIN): ")
    child.sendline(pin)
    assert menu.status().ckr == "CKR_OK"
    assert menu.quit() == 0
    lines = [line for line in log.getvalue().splitlines() if pin in line]
    assert lines == [f"Select a slot: {pin}"], lines  # the terminal's echo of the typing


def test_ctrl_c_at_the_menu_quits_with_130(lab, tmp_path) -> None:
    """Issue 10: Ctrl-C ends any hacli command with 130, the menu too."""
    child = spawn(lab.conf_path, tty=True, cwd=tmp_path)
    child.expect_exact(CHOICE)
    child.sendintr()
    assert finish(child) == 130
    assert "Traceback" not in child.before and "Aborted" not in child.before


def test_restore_offers_recovery_when_the_group_will_not_take_it_back(healthy_lab,
                                                                       tmp_path) -> None:
    """Issue 10: with automatic recovery off (reconnAtt 0), 122 no longer promises
    that the group takes the member back; it says why not and offers the
    administrator's recovery (the use case of `hagroup recover`).  Declined,
    the member stays down; accepted, it serves again."""
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    conf = tmp_path / "Chrystoki.conf"
    shutil.copyfile(lab.conf_path, conf)
    assert run("--conf", str(conf), "hagroup", "retry", "--count", "0").code == 0
    menu = Menu(spawn(conf, tty=True, cwd=tmp_path))
    lab_member(menu, 120, 2, "failed")
    assert ha_status(menu)[m1] == "CKR_DEVICE_ERROR"
    out = menu.run(122, "2", "n")
    assert "Automatic recovery is off (reconnAtt 0)" in out.text, out.text
    assert "Recover it into the HA group now (y/n) [n]:" in out.text
    assert "takes it back" not in out.text and out.ckr == "CKR_OK"
    assert ha_status(menu)[m1] == "CKR_TOKEN_NOT_PRESENT"  # not taken back by itself
    out = menu.run(122, "2", "y")
    assert f"HSM {m1} - recovered" in out.text and out.ckr == "CKR_OK", out.text
    assert ha_status(menu) == {m0: "CKR_OK", m1: "CKR_OK",
                               "status": "Doing great, no errors (CKR_OK)"}
    assert menu.quit() == 0
