"""Every key on every member, in the lab, checked by a third-party client.

Sensitive AES, RSA and EC keys are generated through the HA slot while one lab
member is down; after it is restored, `hacli hagroup synchronize` brings them
over (wrapped under the transport key, never in the clear), OpenSC's
pkcs11-tool lists the same objects on every member token, and each member
alone signs and decrypts with its copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from clihelpers import run_process
from enginehelpers import lab_config
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine import Engine
from hacli.engine.member import TRANSPORT_LABEL
from hacli.lab import find_tools

pytestmark = pytest.mark.lab

LABELS = ("rep-aes", "rep-rsa", "rep-ec")
PIN_VAR = "HACLI_TEST_PKCS11_TOOL_PIN"


def pkcs11_tool_objects(lab, token_label: str) -> set[tuple[str, str, str]]:
    """(type, label, id) of every object pkcs11-tool lists on one member token,
    opened directly through SoftHSM2 (not through hacli, not through p11-kit)."""
    tool = shutil.which("pkcs11-tool")
    assert tool, "pkcs11-tool (Debian package opensc) is installed by `make install`"
    env = {**os.environ, **lab.member(token_label).softhsm2_env, PIN_VAR: lab.pin()}
    proc = subprocess.run(
        [tool, "--module", find_tools().softhsm2, "--token-label", token_label, "--login",
         "--pin", f"env:{PIN_VAR}", "--list-objects"],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    objects = set()
    for block in re.split(r"\n(?=\S)", proc.stdout):
        head = re.match(r"(Private Key|Public Key|Secret Key|Data object|Certificate) Object",
                        block)
        if not head:
            continue
        label = re.search(r"^\s*label:\s*(.*)$", block, re.M)
        ident = re.search(r"^\s*ID:\s*(\S*)$", block, re.M)
        objects.add((head.group(1), label.group(1).strip() if label else "",
                     ident.group(1) if ident else ""))
    return objects


def test_keys_made_while_a_member_is_down_reach_it_wrapped(healthy_lab, tmp_path: Path) -> None:
    lab = healthy_lab
    m0, m1 = lab.members()
    cfg = lab_config(lab, tmp_path / "halog", synchronize=False)
    with Engine(cfg) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            lab.fail(m1.serial)
            try:
                g.status()  # the probe notices the failure
                assert not g.members[1].alive
                s.generate_key(KeyType.AES, 256, label="rep-aes", token=True)
                s.generate_keypair(KeyType.RSA, 2048, label="rep-rsa", token=True)
                s.generate_keypair(KeyType.EC, curve="secp256r1", label="rep-ec", token=True)
            finally:
                lab.restore(m1.serial)
    try:
        before = pkcs11_tool_objects(lab, m1.label)
        assert not {o for o in before if o[1] in LABELS}

        res = run_process("--conf", str(lab.conf_path), "hagroup", "synchronize",
                          "--pin-file", str(lab.pin_file))
        assert res.code == 0, res.out + res.err
        assert "in sync" in res.out and "NOT in sync" not in res.out
        copied = [ln for ln in res.out.splitlines() if ln.startswith(f"Copied to {m1.serial}")]
        assert any("(wrap)" in ln and "rep-aes" in ln for ln in copied), res.out
        assert not any("(value)" in ln and "PRIVATE" in ln.upper() for ln in copied)

        on0 = pkcs11_tool_objects(lab, m0.label)
        on1 = pkcs11_tool_objects(lab, m1.label)
        ours = {o for o in on0 if o[1] in LABELS}
        assert {o[:2] for o in ours} >= {("Secret Key", "rep-aes"), ("Private Key", "rep-rsa"),
                                         ("Public Key", "rep-rsa"), ("Private Key", "rep-ec"),
                                         ("Public Key", "rep-ec")}
        assert on0 == on1  # identical objects, the transport key included
        assert any(o[1] == TRANSPORT_LABEL for o in on1)

        # each member alone, with its own copy
        with Engine(lab_config(lab, tmp_path / "halog2")) as engine:
            g = engine.group()
            iv = os.urandom(16)
            plain = b"every key on every member"
            results = {}
            for member in (m0, m1):
                with g.open_session(member=member.serial) as ms:
                    if not g.logged_in:
                        ms.login(lab.pin())

                    def one(label: str, cls: ObjectClass) -> int:
                        (h,) = ms.find_objects({Attribute.LABEL: label, Attribute.CLASS: cls})
                        return h

                    aes = one("rep-aes", ObjectClass.SECRET_KEY)
                    assert ms.get_attribute(aes, Attribute.SENSITIVE) is True
                    cipher = ms.encrypt(aes, plain, mechanism=Mechanism.AES_CBC_PAD,
                                        mechanism_param=iv)
                    rsa = ms.sign(one("rep-rsa", ObjectClass.PRIVATE_KEY), plain,
                                  mechanism=Mechanism.SHA256_RSA_PKCS)
                    ec = ms.sign(one("rep-ec", ObjectClass.PRIVATE_KEY), bytes(32),
                                 mechanism=Mechanism.ECDSA)
                    results[member.serial] = (aes, cipher, rsa, ec)
            for member, other in ((m0, m1), (m1, m0)):
                with g.open_session(member=member.serial) as ms:
                    if not g.logged_in:
                        ms.login(lab.pin())
                    aes, _c, rsa_sig, ec_sig = results[member.serial]
                    # the other member's ciphertext decrypts here: the same key value
                    assert ms.decrypt(aes, results[other.serial][1],
                                      mechanism=Mechanism.AES_CBC_PAD,
                                      mechanism_param=iv) == plain
                    (rsa_pub,) = ms.find_objects({Attribute.LABEL: "rep-rsa",
                                                  Attribute.CLASS: ObjectClass.PUBLIC_KEY})
                    (ec_pub,) = ms.find_objects({Attribute.LABEL: "rep-ec",
                                                 Attribute.CLASS: ObjectClass.PUBLIC_KEY})
                    assert ms.verify(rsa_pub, plain, results[other.serial][2],
                                     mechanism=Mechanism.SHA256_RSA_PKCS)
                    assert ms.verify(ec_pub, bytes(32), results[other.serial][3],
                                     mechanism=Mechanism.ECDSA)
                    assert rsa_sig == results[other.serial][2]  # PKCS#1 v1.5: same key
                    assert ec_sig
    finally:
        with Engine(lab_config(lab, tmp_path / "halog3")) as engine:
            g = engine.group()
            for member in (m0, m1):
                with g.open_session(member=member.serial) as ms:
                    if not g.logged_in:
                        ms.login(lab.pin())
                    for label in LABELS:
                        for h in ms.find_objects({Attribute.LABEL: label,
                                                  Attribute.TOKEN: True}):
                            ms.destroy_object(h)
