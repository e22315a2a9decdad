"""The menu's token administration on real lab members: 3 Login as SO or Crypto
Officer, 5 Change PIN (C_SetPIN), 6 Init Token (C_InitToken), 46 Digest Key
(C_DigestKey), 13 Session Info.

These change PINs and wipe tokens, so they run on a lab of their own (made
once for this module, ~0.5 s), never on the session's shared lab.  What the
menu did is checked from outside with pkcs11-tool, opening each member's
token directly through SoftHSM2.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from menuhelpers import Menu, spawn
from test_menu_piped import direct_group  # noqa: F401 -- the fixture, for this module too

from hacli.engine import CKRError
from hacli.lab import Lab, find_tools
from hacli.lab.provision import provision_lab

pytestmark = pytest.mark.lab

PIN_VAR = "HACLI_TEST_TOOL_PIN"
#: The SO PIN of the ``direct_group`` fixture's tokens.
DIRECT_SO_PIN = "5678-direct"


@pytest.fixture(scope="module")
def admin_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("adminlab"), timeout=10.0)
    lab.up(2)
    provision_lab(lab)
    yield lab
    lab.down(purge=True)


def tool(lab: Lab, label: str, pin: str, *args: str, so: bool = False) -> \
        subprocess.CompletedProcess[str]:
    """pkcs11-tool on one member's token, opened directly (not through hacli or p11-kit)."""
    exe = shutil.which("pkcs11-tool")
    assert exe, "pkcs11-tool (Debian package opensc) is installed by `make install`"
    env = {**os.environ, **lab.member(label).softhsm2_env, PIN_VAR: pin}
    return subprocess.run(
        [exe, "--module", find_tools().softhsm2, "--token-label", label, "--login",
         *(["--session-rw", "--login-type", "so", "--so-pin"] if so else ["--pin"]),
         f"env:{PIN_VAR}",
         *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def logs_in(lab: Lab, label: str, pin: str, so: bool = False) -> bool:
    return tool(lab, label, pin, "--list-objects", so=so).returncode == 0


def labels_on(lab: Lab, label: str) -> set[str]:
    proc = tool(lab, label, lab.pin(), "--list-objects")
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"^\s*label:\s*(.*?)\s*$", proc.stdout, re.M))


@pytest.fixture
def menu(admin_lab: Lab, tmp_path: Path) -> Iterator[Menu]:
    m = Menu(spawn(admin_lab.conf_path, tty=False, cwd=tmp_path))
    yield m
    assert m.quit() == 0


def test_session_info_names_the_sessions_slot_and_state(admin_lab: Lab, menu: Menu) -> None:
    m0 = admin_lab.members()[0].serial
    member = menu.run(1, "1", "1").number(r"Session handle: (\d+)")
    text = menu.run(13, str(member)).text
    assert f"Slot:   slot#1 (member {m0})" in text and "State:  CKS_RW_PUBLIC_SESSION" in text
    assert menu.run(3, str(member), "2", "").ckr == "CKR_OK"
    text = menu.run(13, str(member)).text
    assert f"Slot:   slot#1 (member {m0})" in text and "State:  CKS_RW_USER_FUNCTIONS" in text
    ha = menu.run(1, "3", "2").number(r"Session handle: (\d+)")
    text = menu.run(13, str(ha)).text
    assert "Slot:   slot#3 (HA group labgroup)" in text and "State:  CKS_RO_USER_FUNCTIONS" in text


def test_login_offers_so_and_crypto_officer(admin_lab: Lab, menu: Menu) -> None:
    rw = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    out = menu.run(3, str(rw), "1", "")  # 1 - SO, the lab's SO PIN
    assert "User type:\n  1 - SO\n  2 - Crypto Officer\nSelect user type [2]: 1" in out.text
    assert "Enter SO PIN (empty: the lab's SO PIN): " in out.text
    assert out.ckr == "CKR_OK" and "Logged in as SO" in out.text
    assert "State:  CKS_RW_SO_FUNCTIONS" in menu.run(13, str(rw)).text
    # one role at a time, as PKCS#11 says
    assert menu.run(3, str(rw), "2", "").ckr == "CKR_USER_ANOTHER_ALREADY_LOGGED_IN"
    assert menu.run(4, str(rw)).ckr == "CKR_OK"
    # the SO cannot log in while a read-only session is open
    ro = menu.run(1, "3", "2").number(r"Session handle: (\d+)")
    assert menu.run(3, str(rw), "1", "").ckr == "CKR_SESSION_READ_ONLY_EXISTS"
    menu.run(2, str(ro))
    # a wrong SO PIN: one attempt, the token's answer
    menu.send("3", str(rw), "1")
    menu.child.expect_exact("Enter SO PIN (empty: the lab's SO PIN): ")
    menu.send("not-the-so-pin")
    out = menu.status()
    assert out.ckr == "CKR_PIN_INCORRECT" and "Enter SO PIN" not in out.text
    out = menu.run(3, str(rw), "", "")  # the default user type: Crypto Officer
    assert out.ckr == "CKR_OK" and "Logged in as Crypto Officer" in out.text
    assert menu.run(4, str(rw)).ckr == "CKR_OK"


def change_pin(menu: Menu, session: int, *pins: str):
    """5 Change PIN on ``session``, with ``pins`` typed at its hidden prompts in turn
    (current, new, new again, ...); the outcome."""
    menu.send("5", str(session))
    menu.child.expect(r"Enter current (SO )?PIN")
    head = menu.child.before.replace("\r\n", "\n")  # what 5 said before its first prompt
    menu.send(*pins)
    out = menu.status()
    out.text = head + out.text
    return out


def test_change_pin_on_the_ha_slot_changes_every_member(admin_lab: Lab, menu: Menu) -> None:
    lab, pin = admin_lab, admin_lab.pin()
    labels = [m.label for m in lab.members()]
    serials = [m.serial for m in lab.members()]
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    # the new PIN typed twice, differently the first time: asked again, nothing sent
    out = change_pin(menu, ha, pin, "ha-new-1", "ha-new-typo", "ha-new-1", "ha-new-1")
    assert out.ckr == "CKR_OK", out.text
    assert "Changing the PIN of Crypto Officer on every member of HA group labgroup." \
        in out.text
    assert "The two new PINs differ; enter them again (nothing was changed)." in out.text
    assert f"PIN changed on {', '.join(serials)}." in out.text
    assert f"The lab's PIN file {lab.pin_file} still holds the old one." in out.text
    assert "ha-new" not in out.text and pin not in out.text
    assert all(logs_in(lab, label, "ha-new-1") for label in labels)
    assert not any(logs_in(lab, label, pin) for label in labels)
    # a wrong current PIN changes nothing anywhere
    out = change_pin(menu, ha, "not-the-pin", "x-new-2", "x-new-2")
    assert out.ckr == "CKR_PIN_INCORRECT"
    assert "no member changed its PIN" in out.text
    assert all(logs_in(lab, label, "ha-new-1") for label in labels)
    # back to the lab's PIN (the group logs in with it again)
    assert change_pin(menu, ha, "ha-new-1", pin, pin).ckr == "CKR_OK"
    assert all(logs_in(lab, label, pin) for label in labels)
    assert menu.run(3, str(ha), "", "").ckr == "CKR_OK"


def test_change_pin_on_the_ha_slot_is_all_or_nothing(admin_lab: Lab, menu: Menu) -> None:
    lab, pin = admin_lab, admin_lab.pin()
    (m0, m1) = lab.members()
    # member1 alone gets another PIN, through its member slot
    one = menu.run(1, "2", "1").number(r"Session handle: (\d+)")
    out = change_pin(menu, one, pin, "m1-only", "m1-only")
    assert out.ckr == "CKR_OK" and f"PIN changed on {m1.serial}." in out.text
    assert "The other members of HA group labgroup keep their PIN" in out.text
    assert logs_in(lab, m1.label, "m1-only") and logs_in(lab, m0.label, pin)
    # the group-wide change: member0 takes it, member1 refuses, member0 is changed back
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    out = change_pin(menu, ha, pin, "all-new", "all-new")
    assert out.ckr == "CKR_PIN_INCORRECT"
    assert (f"C_SetPIN failed on member {m1.serial} (CKR_PIN_INCORRECT); changed back on "
            f"{m0.serial}.") in out.text
    assert logs_in(lab, m0.label, pin) and not logs_in(lab, m0.label, "all-new")
    assert logs_in(lab, m1.label, "m1-only")
    assert change_pin(menu, one, "m1-only", pin, pin).ckr == "CKR_OK"
    assert logs_in(lab, m1.label, pin)


def test_change_pin_as_so_changes_the_so_pin(admin_lab: Lab, menu: Menu) -> None:
    lab, so_pin = admin_lab, admin_lab.so_pin()
    labels = [m.label for m in lab.members()]
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    assert menu.run(3, str(ha), "1", "").ckr == "CKR_OK"
    out = change_pin(menu, ha, so_pin, "so-new-1", "so-new-1")
    assert out.ckr == "CKR_OK", out.text
    assert "Changing the SO PIN of SO on every member of HA group labgroup." in out.text
    assert f"The lab's SO PIN file {lab.so_pin_file} still holds the old one." in out.text
    assert all(logs_in(lab, label, "so-new-1", so=True) for label in labels)
    assert all(logs_in(lab, label, lab.pin()) for label in labels)  # the user's is kept
    assert change_pin(menu, ha, "so-new-1", so_pin, so_pin).ckr == "CKR_OK"
    assert all(logs_in(lab, label, so_pin, so=True) for label in labels)


def test_init_pin_is_the_sos(admin_lab: Lab, menu: Menu) -> None:
    lab, pin = admin_lab, admin_lab.pin()
    labels = [m.label for m in lab.members()]
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    out = menu.run(7, str(ha))
    assert out.ckr == "CKR_USER_NOT_LOGGED_IN" and "log in as SO first" in out.text
    assert menu.run(3, str(ha), "1", "").ckr == "CKR_OK"
    out = menu.run(7, str(ha), "set-by-so", "set-by-so")
    assert out.ckr == "CKR_OK", out.text
    serials = ", ".join(m.serial for m in lab.members())
    assert f"User PIN set on {serials}." in out.text and "set-by-so" not in out.text
    assert all(logs_in(lab, label, "set-by-so") for label in labels)
    assert menu.run(7, str(ha), pin, pin).ckr == "CKR_OK"
    assert all(logs_in(lab, label, pin) for label in labels)


def test_digest_key_digests_the_keys_value_on_the_token(admin_lab: Lab, menu: Menu) -> None:
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    assert menu.run(3, str(ha), "", "").ckr == "CKR_OK"
    text = menu.run(65, str(ha)).text
    key = int(re.search(r"Key handle (\d+): known-aes128", text).group(1))
    expected = hashlib.sha256(bytes(range(16))).hexdigest()  # the key's published value
    out = menu.run(46, str(ha), str(key), "1")
    assert out.ckr == "CKR_OK", out.text
    assert f"CKM_SHA256 digest of the value of key {key} (C_DigestKey): {expected}" in out.text
    # each member's token digests its own copy of the key: the same value
    for slot in ("1", "2"):
        member = menu.run(1, slot, "1").number(r"Session handle: (\d+)")
        assert expected in menu.run(46, str(member), str(key), "1").text
    # a key that is not a secret key is not offered
    text = menu.run(45, str(ha), "3", "ec-for-46", "n", "1").text
    public = re.search(r"Public key handle: (\d+)", text).group(1)
    out = menu.run(46, str(ha), public, str(key), "2")
    assert f"Handle {public} is a CKO_PUBLIC_KEY; this needs a CKO_SECRET_KEY." in out.text
    assert hashlib.sha1(bytes(range(16))).hexdigest() in out.text


def test_init_token_on_a_member_slot(admin_lab: Lab, menu: Menu) -> None:
    """Last in this module: it wipes member1's token."""
    lab = admin_lab
    m0, m1 = lab.members()
    ha = menu.run(1, "3", "1").number(r"Session handle: (\d+)")
    assert menu.run(3, str(ha), "", "").ckr == "CKR_OK"
    assert menu.run(45, str(ha), "1", "before-init", "y", "3").ckr == "CKR_OK"
    assert "before-init" in labels_on(lab, m1.label)
    # never on the HA slot: it would wipe every member
    out = menu.run(6, "3")
    assert out.ckr == "CKR_FUNCTION_NOT_SUPPORTED"
    assert "Init Token on the HA slot would erase every member of HA group labgroup" in out.text
    # a lab member keeps its label; a "no" changes nothing; a wrong SO PIN neither
    assert menu.run(6, "2", "renamed").ckr == "CKR_ARGUMENTS_BAD"
    out = menu.run(6, "2", "", "n")
    assert out.ckr == "CKR_FUNCTION_CANCELED" and "Nothing was changed." in out.text
    menu.send("6", "2", "", "y")
    menu.child.expect_exact("Enter SO PIN (empty: the lab's SO PIN): ")
    menu.send("not-the-so-pin", "")
    out = menu.status()
    assert out.ckr == "CKR_PIN_INCORRECT"
    assert "before-init" in labels_on(lab, m1.label)
    # the real thing: the lab's SO PIN, the lab's user PIN on the new token
    out = menu.run(6, "2", "", "y", "", "")
    assert out.ckr == "CKR_OK", out.text
    assert f"Token {m1.serial} initialised (label member1); its user PIN is set." in out.text
    assert f"Member {m1.serial} serves HA group labgroup again" in out.text
    # the token is empty but for the group's transport key (given back by the SO)
    assert labels_on(lab, m1.label) == {"hacli-transport"}
    assert "before-init" in labels_on(lab, m0.label)
    text = menu.run(52, "3").text
    assert f"HSM {m0.serial} - CKR_OK" in text and f"HSM {m1.serial} - CKR_OK" in text


def test_init_token_on_a_member_loaded_directly(direct_group, tmp_path: Path) -> None:  # noqa: F811
    """The same through the engine on a group whose members are SoftHSM2 tokens
    loaded directly (no p11-kit): the module is initialised already in the
    private instance, and its copy is another application to the token."""
    from pkcs11 import Attribute, KeyType

    from hacli.conf.model import load_config
    from hacli.conf.store import load
    from hacli.engine import Engine

    def labels(session) -> set[str]:
        return {session.get_attribute(h, Attribute.LABEL) for h in session.find_objects()}

    config = load_config(load(direct_group.conf), str(direct_group.conf))
    with Engine(config, state_dir=tmp_path) as engine:
        group = engine.group()
        m0, m1 = (m.serial for m in group.members)
        with group.open_session() as s:
            s.login(direct_group.pin)
            s.generate_key(KeyType.AES, 128, label="made-before", token=True)
            back = engine.init_token(m1, DIRECT_SO_PIN, "direct1", direct_group.pin)
            assert back, [(m.serial, m.state, m.last_error) for m in group.members]
            with group.open_session(member=m1) as wiped, group.open_session(member=m0) as kept:
                assert labels(wiped) == {"hacli-transport"}
                assert "made-before" in labels(kept)
            assert all(m.alive for m in group.members)
        # a wrong SO PIN changes nothing
        with pytest.raises(CKRError) as err:
            engine.init_token(m0, "not-the-so-pin", "direct0")
        assert err.value.ckr == "CKR_PIN_INCORRECT"
