"""The CKDemo-style menu with piped stdin: every working option, every option
this tool does not provide, bad answers at every kind of prompt, PIN sources.

Sessions on the lab group are driven through pipes (``pexpect.popen_spawn``,
so handles printed by one option can be used in the next); fixed scripts go
through ``subprocess.run``.  Wrapping, unwrapping and ECDH derivation need
mechanisms p11-kit 0.24's RPC does not carry, so they also run on a group whose
two members are SoftHSM2 tokens loaded directly (``direct_group``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from menuhelpers import HACLI, Menu, spawn

pytestmark = pytest.mark.lab

SOFTHSM2 = "/usr/lib/softhsm/libsofthsm2.so"
UNSUPPORTED = (16, 17, 18, 19, 64, 66, 67, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79,
               80, 81, 82, 83, 84, 85, 86, 87, 94, 95, 97, 101, 102, 103, 104, 105, 106, 107,
               108, 109, 110)
NO_TRACEBACK = "Traceback"


def piped(conf: Path | str, answers: list[str], *args: str, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``hacli --conf CONF ckdemo ARGS`` with ``answers`` on stdin, one a line."""
    full = {k: v for k, v in os.environ.items() if k != "HACLI_PIN"} | (env or {})
    proc = subprocess.run([HACLI, "--conf", str(conf), "ckdemo", *args],
                          input="".join(a + "\n" for a in answers), capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=60, check=False)
    assert NO_TRACEBACK not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def statuses(text: str) -> list[str]:
    return re.findall(r"^Status: .* \((CKR_\w+)\)$", text, re.MULTILINE)


# ---------------------------------------------------------------------------
# a group of two SoftHSM2 tokens loaded directly (every SoftHSM2 mechanism)


@dataclass
class DirectGroup:
    conf: Path
    pin: str


@pytest.fixture(scope="module")
def direct_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectGroup]:
    base = tmp_path_factory.mktemp("direct")
    (base / "tokens").mkdir()
    softhsm_conf = base / "softhsm2.conf"
    softhsm_conf.write_text(f"directories.tokendir = {base / 'tokens'}\n"
                            "objectstore.backend = file\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(softhsm_conf)}
    pin, so_pin = "1234-direct", "5678-direct"
    for label in ("direct0", "direct1"):
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", pin, "--so-pin", so_pin], env=env, check=True,
                       capture_output=True)
    shown = subprocess.run(["softhsm2-util", "--show-slots"], env=env, check=True,
                           capture_output=True, text=True).stdout
    serials = re.findall(r"Serial number:\s+([0-9a-f]{16})", shown)
    assert len(serials) == 2, shown
    members = "".join(
        f"   Member{i:02d}Serial = {s};\n   Member{i:02d}Library = {SOFTHSM2};\n"
        f"   Member{i:02d}Environment = SOFTHSM2_CONF={softhsm_conf};\n"
        for i, s in enumerate(serials))
    conf = base / "Chrystoki.conf"
    conf.write_text(
        "LunaSA Client = {\n   ReceiveTimeout = 3000;\n}\n"
        "VirtualToken = {\n   VirtualToken00Label = direct;\n"
        f"   VirtualToken00SN = 1{serials[0]};\n"
        f"   VirtualToken00Members = {serials[0]},{serials[1]};\n}}\n"
        "HAConfiguration = {\n   AutoReconnectInterval = 5;\n   reconnAtt = -1;\n}\n"
        f"hacli = {{\n{members}}}\n")
    # the group's transport key (SO PIN), in a child so this process loads no module
    code = ("import sys; from hacli.conf.model import load_config; "
            "from hacli.conf.store import load; from hacli.engine import provision_transport_key;"
            " p = sys.argv[1]; print(provision_transport_key(load_config(load(p), p), 'direct',"
            " sys.argv[2], sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, str(conf), so_pin, pin], check=True,
                   capture_output=True)
    yield DirectGroup(conf, pin)


# ---------------------------------------------------------------------------
# the menu itself


def test_menu_text_quit_and_end_of_input(lab, direct_group) -> None:
    from test_menu_pty import ORIGIN_MENU, squeeze

    proc = piped(lab.conf_path, ["0"])
    assert proc.returncode == 0
    lines = squeeze(proc.stdout)
    assert lines[: len(squeeze(ORIGIN_MENU))] == squeeze(ORIGIN_MENU)
    assert lines[-5:] == ["LAB FUNCTIONS (hacli lab):",
                          "(120) Fail member (121) Hang member (122) Restore member",
                          "(123) Lab status", "(0) Quit demo", "Enter your choice : 0"]
    # not a lab group: no lab section; end of input quits with status 0
    proc = piped(direct_group.conf, [])
    assert proc.returncode == 0
    assert squeeze(proc.stdout)[-2:] == ["(0) Quit demo", "Enter your choice :"]
    assert "LAB FUNCTIONS" not in proc.stdout
    proc = piped(direct_group.conf, ["120"])
    assert "There is no option 120 in the menu" in proc.stdout


def test_working_and_unsupported_options_cover_the_menu() -> None:
    from hacli.cli.menu import screen
    from hacli.cli.menu.actions import ACTIONS

    working = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24, 25, 26, 27,
               40, 41, 42, 43, 44, 45, 46, 50, 51, 52, 60, 61, 62, 63, 65, 90, 98}
    assert set(ACTIONS) == working | {120, 121, 122, 123}
    assert set(screen.entries(lab=False)) == working | set(UNSUPPORTED) | {0}


def test_every_unsupported_option(lab) -> None:
    proc = piped(lab.conf_path, [str(n) for n in UNSUPPORTED])
    assert proc.returncode == 0
    assert statuses(proc.stdout) == ["CKR_FUNCTION_NOT_SUPPORTED"] * len(UNSUPPORTED)
    for n in UNSUPPORTED:
        assert re.search(rf"^\({n}\) .+ is a Luna appliance function that this tool does not "
                         "provide\\.$", proc.stdout, re.MULTILINE), n
    assert "Status: this function is not supported here (CKR_FUNCTION_NOT_SUPPORTED)" \
        in proc.stdout
    assert "(HA Init" not in proc.stdout  # nothing was connected for them


# ---------------------------------------------------------------------------
# every working option on the lab group


def test_working_options_on_the_lab(lab, tmp_path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(lab.pin() + "\n")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(1000))
    (tmp_path / "abc.txt").write_bytes(b"abc")
    m0, m1 = (m.serial for m in lab.members())
    menu = Menu(spawn(lab.conf_path, "--pin-file", str(pin_file), tty=False, cwd=tmp_path))

    def ok(option: int, *answers: str) -> str:
        out = menu.run(option, *answers)
        assert out.ckr == "CKR_OK", out.text
        assert out.words == "Doing great, no errors"
        return out.text

    text = ok(50)
    assert f"HSM {m0} - connected" in text and f"HSM {m1} - connected" in text
    assert "slot#3 - HA Virtual Card Slot (labgroup, token present)" in ok(14)
    assert "Library description: hacli HA engine" in ok(10)
    assert "Flags:            CKF_TOKEN_PRESENT | CKF_REMOVABLE_DEVICE" in ok(11, "3")
    assert f"Serial number:    {lab.group_serial}" in ok(12, "3")
    assert "Model:            SoftHSM v2" in ok(12, "1")
    assert "CKM_SHA256_RSA_PKCS" in ok(8, "3")
    assert "Flags:        CKF_DIGEST" in ok(9, "2", "CKM_SHA256")
    assert "HSM " in ok(52, "3")

    session = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    text = ok(51, "3")
    assert "Using the PIN from --pin-file" in text and lab.pin() not in text
    assert menu.run(3, "", "").ckr == "CKR_USER_ALREADY_LOGGED_IN"
    ok(4, "")
    ok(3, "", "")
    assert "State:  CKS_RW_USER_FUNCTIONS" in ok(13, str(session))

    # objects
    data = menu.run(20, "", "menu-data", "1", "some value", "n").number(r"Object handle: (\d+)")
    copy = menu.run(21, "", str(data), "").number(r"New object handle: (\d+)")
    assert "CKA_LABEL = menu-data-copy" in ok(24, "", str(copy), "")
    ok(25, "", str(copy), "CKA_LABEL", "renamed")
    text = ok(27, "", str(copy))
    assert "CKA_LABEL                renamed" in text
    assert "CKA_VALUE                736f6d652076616c7565 (10 bytes)" in text
    assert re.search(r"Object size of \d+: \d+ bytes", ok(23, "", str(copy)))
    assert f"handle {copy} - CKO_DATA 'renamed'" in ok(26, "", "2", "renamed")
    assert f"handle {data} - CKO_DATA" in ok(26, "", "3", "1")
    ok(22, "", str(copy))

    # security functions: AES file encryption, RSA and EC signatures, digest
    aes = menu.run(45, "", "1", "menu-aes", "n", "3").number(r"Key handle: (\d+)")
    ok(40, "", str(aes), "1", str(plain), "")
    # the first mechanism offered is CKM_AES_CBC_PAD (the lab's p11-kit carries
    # its IV): a random IV, then the padded ciphertext
    size = plain.stat().st_size
    assert (tmp_path / "plain.bin.enc").stat().st_size == 16 + (size // 16 + 1) * 16
    ok(41, "", str(aes), "1", f"{plain}.enc", "")
    assert (tmp_path / "plain.bin.dec").read_bytes() == plain.read_bytes()
    rsa = menu.run(45, "", "2", "menu-rsa", "n", "2048")
    for mech in ("1", "2"):
        ok(42, "", str(rsa.number(r"private key handle: (\d+)")), mech, "2", str(plain), "sig")
        ok(43, "", str(rsa.number(r"Public key handle: (\d+)")), mech, "2", str(plain), "sig")
    ec = menu.run(45, "", "3", "menu-ec", "n", "2")
    ok(42, "", str(ec.number(r"private key handle: (\d+)")), "", "1", "typed text", "")
    ok(43, "", str(ec.number(r"Public key handle: (\d+)")), "", "1", "typed text", "")
    bad = menu.run(43, "", str(ec.number(r"Public key handle: (\d+)")), "", "1", "other", "")
    assert bad.ckr == "CKR_SIGNATURE_INVALID"
    assert "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" in \
        ok(44, "", "", "2", "abc.txt")

    # key functions
    assert re.search(r"Random \(16 bytes\): [0-9a-f]{32}\n", ok(62, "", "16"))
    assert "known-aes256 (FIPS-197 C.3)" in ok(65, "")
    wrap = menu.run(60, "", str(rsa.number(r"Public key handle: (\d+)")), str(aes), "1")
    assert wrap.ckr == "CKR_KEY_NOT_WRAPPABLE" and "only a trusted wrapping key" in wrap.text
    # with the group's trusted transport key, 60 wraps and 61 unwraps on lab members
    # (the lab's p11-kit carries CKM_AES_KEY_WRAP_PAD)
    found = ok(26, "", "2", "hacli-transport")
    transport = re.search(r"handle (\d+) - CKO_SECRET_KEY CKK_AES 'hacli-transport'", found)
    assert transport, found
    blob = tmp_path / "menu-wrapped.key"
    wrapped = ok(60, "", transport.group(1), str(aes), "1", str(blob))
    assert re.search(r"Wrapped key \(40 bytes\)", wrapped) and blob.stat().st_size == 40
    unwrapped = ok(61, "", transport.group(1), "1", str(blob), "1", "menu-unwrapped")
    assert re.search(r"Key unwrapped\. Key handle: \d+", unwrapped)
    ec_priv = str(ec.number(r"private key handle: (\d+)"))
    ec_pub = str(ec.number(r"Public key handle: (\d+)"))
    derived = ok(63, "", ec_priv, ec_pub, "3", "menu-ecdh")
    assert re.search(r"CKM_ECDH1_DERIVE: AES-256 key derived\. Key handle: \d+", derived)

    # others: self test on the HA slot and on a member slot, options
    for slot in ("3", "1"):
        text = ok(90, slot)
        assert text.count("PASS") == 5 and "Self test of slot#" in text
    ok(98, "y")
    assert f"  {m0}: " in ok(52, "3")  # verbose detail
    ok(98, "n")
    assert "No slot event within 1 s." in menu.run(15, "1").text

    # a session on a member slot goes to that member only
    member_session = menu.run(1, "1", "2").number(r"Session handle: (\d+)")
    text = ok(13, str(member_session))
    # its own slot (not the HA slot's), and its state while the user is logged in
    assert f"Slot:   slot#1 (member {m0})" in text
    assert "State:  CKS_RO_USER_FUNCTIONS" in text
    ok(62, str(member_session), "8")
    ok(2, str(member_session))
    ok(2, str(session))
    assert menu.quit() == 0


def test_lab_options(healthy_lab) -> None:
    lab = healthy_lab
    m1 = lab.members()[1].serial
    proc = piped(lab.conf_path, ["120", "2", "123", "122", "2", "121", "2", "123", "122", "2",
                                 "123"])
    assert proc.returncode == 0
    assert statuses(proc.stdout) == ["CKR_OK"] * 7
    assert f"member1 ({m1}) is failed." in proc.stdout
    assert re.search(rf"member#2 - member1 \({m1}\) failed$", proc.stdout, re.MULTILINE)
    assert re.search(rf"member#2 - member1 \({m1}\) hung, pid \d+$", proc.stdout, re.MULTILINE)
    assert proc.stdout.count(f"member1 ({m1}) is running.") == 2
    assert lab.status().all_running


# ---------------------------------------------------------------------------
# wrap, unwrap, ECDH, CBC, known answers on a group with every mechanism


def test_key_functions_on_directly_loaded_members(direct_group, tmp_path) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(os.urandom(777))
    (tmp_path / "kat.bin").write_bytes(bytes.fromhex("00112233445566778899aabbccddeeff"))
    (tmp_path / "hmac.txt").write_bytes(b"Sample message for keylen<blocklen")
    menu = Menu(spawn(direct_group.conf, tty=False, cwd=tmp_path,
                      env={"HACLI_PIN": direct_group.pin}))

    def ok(option: int, *answers: str) -> str:
        out = menu.run(option, *answers)
        assert out.ckr == "CKR_OK", out.text
        return out.text

    menu.run(1, "3", "1")
    assert "Using the PIN from HACLI_PIN." in ok(3, "", "")
    transport = menu.run(26, "", "2", "hacli-transport").number(r"handle (\d+) - ")
    aes = menu.run(45, "", "1", "", "", "3").number(r"Key handle: (\d+)")
    ok(40, "", str(aes), "1", "plain.bin", "c.enc")  # CKM_AES_CBC_PAD
    assert (tmp_path / "c.enc").stat().st_size == 16 + 784
    ok(60, "", str(transport), str(aes), "1", "w.key")
    text = ok(61, "", str(transport), "1", "w.key", "1", "unwrapped")
    unwrapped = int(re.search(r"Key handle: (\d+)", text).group(1))
    ok(41, "", str(unwrapped), "1", "c.enc", "c.dec")
    assert (tmp_path / "c.dec").read_bytes() == plain.read_bytes()

    one = menu.run(45, "", "3", "ec-a", "", "1")
    two = menu.run(45, "", "3", "ec-b", "", "1")
    pub = r"Public key handle: (\d+)"
    priv = r"private key handle: (\d+)"
    d1 = menu.run(63, "", str(one.number(priv)), str(two.number(pub)), "", "")
    d2 = menu.run(63, "", str(two.number(priv)), str(one.number(pub)), "", "")
    for n, derived in enumerate((d1, d2)):
        ok(40, "", str(derived.number(r"Key handle: (\d+)")), "2", "plain.bin", f"d{n}.enc")
    assert (tmp_path / "d0.enc").read_bytes() == (tmp_path / "d1.enc").read_bytes()

    # known keys give the published answers through the ordinary options
    text = ok(65, "")
    aes128 = int(re.search(r"Key handle (\d+): known-aes128", text).group(1))
    hmac = int(re.search(r"Key handle (\d+): known-hmac", text).group(1))
    ok(40, "", str(aes128), "2", "kat.bin", "kat.enc")
    assert (tmp_path / "kat.enc").read_bytes()[:16].hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"
    text = ok(42, "", str(hmac), "", "2", "hmac.txt", "")
    assert "a28cf43130ee696a98f14a37678b56bcfcbdd9e5cf69717fecf5480f0ebdf790" in text
    assert ok(90, "3").count("PASS") == 5
    assert "LAB FUNCTIONS" not in menu.child.before
    assert menu.quit() == 0


# ---------------------------------------------------------------------------
# bad answers at every kind of prompt; PINs


def test_bad_answers_at_every_prompt(lab, tmp_path) -> None:
    (tmp_path / "adir").mkdir()
    menu = Menu(spawn(lab.conf_path, tty=False, cwd=tmp_path))
    child = menu.child

    def expect_message(*texts: str) -> None:
        for t in texts:
            child.expect_exact(t)

    # the menu prompt: letters, out of range, empty
    menu.send("abc", "999", "", "-3")
    expect_message("'abc' is not an option", "There is no option 999 in the menu",
                   "Enter the number of an option (0 quits).", "'-3' is not an option")
    # a slot (letters, unknown), a numbered choice (out of range, letters)
    out = menu.run(1, "x", "9", "3", "7", "rw", "1")
    assert "'x' is not a slot" in out.text and "'9' is not a slot" in out.text
    assert "7 is out of range; enter a number from 1 to 2." in out.text
    assert "'rw' is not a number" in out.text and out.ckr == "CKR_OK"
    session = out.number(r"Session handle: (\d+)")
    # an HA-only slot prompt refuses a member slot
    out = menu.run(52, "1", "3")
    assert "slot#1 is not an HA Virtual Card Slot" in out.text and out.ckr == "CKR_OK"
    # a session handle, a user type, a PIN typed wrong: one attempt, the token's answer
    menu.send("3", "nope", "999", "", "3", "")
    expect_message("3 is out of range; enter a number from 1 to 2.")
    child.expect_exact("Enter PIN (empty: the lab's PIN): ")
    menu.send("wrong-pin")
    out = menu.status()
    assert out.ckr == "CKR_PIN_INCORRECT" and "wrong-pin" not in out.text
    # then the lab's PIN (empty answer)
    out = menu.run(3, "", "", "")
    assert out.ckr == "CKR_OK"
    # an integer with bounds, yes/no, text
    out = menu.run(45, "", "2", "", "maybe", "n", "big", "99999", "1024")
    assert "Answer y or n." in out.text and "'big' is not a number" in out.text
    assert "99999 is out of range; enter a number from 1024 to 8192." in out.text
    assert out.ckr == "CKR_OK"
    rsa_public = out.number(r"Public key handle: (\d+)")
    # object handles: letters, unknown, wrong class
    out = menu.run(42, "", "zz", "424242", str(rsa_public), str(rsa_public + 1), "", "1",
                   "data", "")
    assert "'zz' is not a handle" in out.text and "No object has handle 424242" in out.text
    assert f"Handle {rsa_public} is a CKO_PUBLIC_KEY; this needs a CKO_PRIVATE_KEY or " \
           "CKO_SECRET_KEY." in out.text
    assert out.ckr == "CKR_OK"
    # files: missing, a directory, a missing directory for output; an empty text answer
    out = menu.run(20, "", "", "2", "missing.txt", "adir", str(tmp_path / "adir" / ".."),
                   "/etc/hostname", "")
    assert "No such file: missing.txt" in out.text and "Not a regular file: adir" in out.text
    assert out.ckr == "CKR_OK"
    data = out.number(r"Object handle: (\d+)")
    out = menu.run(42, "", str(rsa_public + 1), "", "1", "", "data", "adir", "no/such/dir/x",
                   "sig.bin")
    assert "An answer is needed here." in out.text
    assert "adir is a directory; enter a file name." in out.text
    assert "No such directory: no/such/dir" in out.text
    assert (tmp_path / "sig.bin").stat().st_size == 128
    # attribute names, hex values, mechanism names
    out = menu.run(25, "", str(rsa_public), "CKA_NOPE", "CKA_CLASS", "CKA_ID", "xyz", "0a0b")
    assert "'CKA_NOPE' is not an attribute" in out.text
    assert "CKA_CLASS cannot be set from the menu" in out.text
    assert "'xyz' is not hexadecimal" in out.text and out.ckr == "CKR_OK"
    out = menu.run(9, "3", "CKM_NOPE", "0x250")
    assert "'CKM_NOPE' is not a mechanism" in out.text and "CKM_SHA256 on slot#3" in out.text
    # an operation the token refuses: its CKR name and plain words
    out = menu.run(24, "", str(rsa_public + 1), "CKA_PRIVATE_EXPONENT")
    assert out.ckr == "CKR_ATTRIBUTE_SENSITIVE"
    assert out.words == "that attribute is sensitive and cannot be read"
    # nothing was lost on the way
    assert "State:  CKS_RW_USER_FUNCTIONS" in menu.run(13, str(session)).text
    assert menu.run(22, "", str(data)).ckr == "CKR_OK"
    assert menu.quit("0") == 0
    assert lab.pin() not in child.before


def test_pin_sources(lab, tmp_path) -> None:
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000")
    proc = piped(lab.conf_path, ["1", "3", "1", "3", "", "", "0"], "--pin-file", str(wrong))
    assert statuses(proc.stdout) == ["CKR_OK", "CKR_PIN_INCORRECT"]
    assert "Status: the PIN is wrong (CKR_PIN_INCORRECT)" in proc.stdout
    proc = piped(lab.conf_path, ["51", "3", "0"], env={"HACLI_PIN": lab.pin()})
    assert statuses(proc.stdout) == ["CKR_OK"] and "Using the PIN from HACLI_PIN." in proc.stdout
    # typed on a pipe: one wrong answer is one login attempt (each counts towards a
    # real HSM's lockout), then the status; the next answer is the menu's again
    proc = piped(lab.conf_path, ["51", "3", "bad1", "52", "3", "0"])
    assert statuses(proc.stdout) == ["CKR_PIN_INCORRECT", "CKR_OK"]
    assert proc.stdout.count("Enter PIN") == 1 and "bad1" not in proc.stdout
    proc = piped(lab.conf_path, ["51", "3", lab.pin(), "0"])
    assert statuses(proc.stdout) == ["CKR_OK"] and not shows(proc, lab.pin())
    assert "Enter PIN (empty: the lab's PIN): \nLogged in" in proc.stdout  # not echoed


def shows(proc: subprocess.CompletedProcess[str], secret: str) -> bool:
    """Whether ``secret`` is anywhere in what the menu wrote (stdout or stderr)."""
    return secret in proc.stdout or secret in proc.stderr


def test_a_pin_one_line_off_is_never_shown(lab, direct_group, tmp_path) -> None:
    """Issue 8, item 12: the PIN fed to a prompt that is not the PIN prompt (piped
    input one line off) is neither echoed nor quoted back, whatever the PIN's source."""
    # the lab's PIN (the lab group's PIN file); an empty answer at the PIN prompt takes it
    pin = lab.pin()
    proc = piped(lab.conf_path, [pin, "51", pin, "3", "", "0"])
    assert statuses(proc.stdout) == ["CKR_OK"], proc.stdout
    assert not shows(proc, pin), proc.stdout + proc.stderr
    assert "Enter your choice : <hidden>\n'<hidden>' is not an option" in proc.stdout
    assert "Select a slot: <hidden>\n'<hidden>' is not a slot" in proc.stdout
    # --pin-file and HACLI_PIN (a group without a lab: the PIN is known only from there)
    pin = direct_group.pin
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin + "\n")
    for args, env in (((), {"HACLI_PIN": pin}), (("--pin-file", str(pin_file)), None)):
        proc = piped(direct_group.conf, [pin, "51", pin, "3", "0"], *args, env=env)
        assert statuses(proc.stdout) == ["CKR_OK"], (args, proc.stdout)
        assert not shows(proc, pin), (args, proc.stdout + proc.stderr)
        assert "Select a slot: <hidden>\n'<hidden>' is not a slot" in proc.stdout
    # typed at the hidden prompt earlier in the session, then one line off at 52
    proc = piped(direct_group.conf, ["1", "3", "1", "3", "", "", pin, "52", pin, "3", "0"])
    assert statuses(proc.stdout) == ["CKR_OK"] * 3, proc.stdout
    assert "Enter PIN: \n" in proc.stdout  # the answer at the PIN prompt: not echoed
    assert not shows(proc, pin), proc.stdout + proc.stderr
    assert "Select a slot: <hidden>\n'<hidden>' is not a slot" in proc.stdout
    # a numeric PIN quoted by a number prompt's message (in any spelling of the number)
    digits = tmp_path / "digits"
    digits.write_text("0123456")
    proc = piped(lab.conf_path, ["0123456", "0"], "--pin-file", str(digits))
    assert "123456" not in proc.stdout + proc.stderr, proc.stdout
    assert "Enter your choice : <hidden>\nThere is no option <hidden> in the menu" \
        in proc.stdout


def test_a_pin_taken_as_an_ordinary_answer_is_hidden_later_too(direct_group, tmp_path) -> None:
    """A known PIN accepted by a text or file prompt (one line off) is not echoed, and
    what the menu prints with that answer later (a label, a file name) hides it."""
    pin = direct_group.pin
    proc = piped(direct_group.conf,
                 ["1", "3", "1", "20", "", pin, "1", "some value", "n", "26", "", "2", pin,
                  "44", "", "", "1", f"my pin is {pin}", "0"],
                 env={"HACLI_PIN": pin}, cwd=tmp_path)
    assert statuses(proc.stdout) == ["CKR_OK"] * 4, proc.stdout
    assert not shows(proc, pin), proc.stdout + proc.stderr
    assert "Label of the data object [hacli-data]: <hidden>\n" in proc.stdout
    assert re.search(r"handle \d+ - CKO_DATA '<hidden>'$", proc.stdout, re.MULTILINE)
    assert "Enter the data to hash: <hidden>\n" in proc.stdout
    # ordinary answers are still echoed
    assert "Enter the data to hash: some value" not in proc.stdout
    assert "Enter the object's value: some value\n" in proc.stdout


def test_end_of_input_inside_an_action(lab) -> None:
    for answers in (["1"], ["1", "3"], ["51", "3"], ["0", "ignored"]):
        proc = piped(lab.conf_path, answers)
        assert proc.returncode == 0, (answers, proc.stdout, proc.stderr)
        assert proc.stderr == ""


def test_status_json_contract_unchanged_by_menu(lab) -> None:
    # the menu's HA Status and `hacli ha status` agree on the member serials
    proc = subprocess.run([HACLI, "--conf", str(lab.conf_path), "ha", "status", "--json"],
                          capture_output=True, text=True, check=False)
    serials = {m["serial"] for m in json.loads(proc.stdout)["groups"][0]["members"]}
    out = piped(lab.conf_path, ["52", "3"]).stdout
    assert serials == set(re.findall(r"^HSM (\w+) - CKR_\w+$", out, re.MULTILINE))
