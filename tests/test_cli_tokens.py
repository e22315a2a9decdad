"""The one-shot commands (hacli slots, objects, mechanisms, keygen, sign, verify,
encrypt, decrypt, random) against real lab members.

One lab of two members for the module (keys made on one member only would
leave the shared lab out of sync for other modules).  Commands run in-process
through the real entry point (``clihelpers.run``) unless the behaviour is about
the process's binary stdin/stdout.  Third-party checks: ``pkcs11-tool
--read-object`` exports public keys straight from a member's token, ``openssl``
verifies hacli's RSA and ECDSA signatures and encrypts what hacli decrypts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clihelpers import HACLI, Result, assert_one_error_line, run
from conftest import _make_lab

from hacli.lab import Lab, find_tools

pytestmark = pytest.mark.lab

IV = "000102030405060708090a0b0c0d0e0f"


@pytest.fixture(scope="module")
def tlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _make_lab(tmp_path_factory, "tokens-lab", 2)


def hacli(lab: Lab, *args: str) -> Result:
    return run("--conf", str(lab.conf_path), *args)


def ok_json(lab: Lab, *args: str) -> dict:
    res = hacli(lab, *args, "--json")
    assert res.code == 0, (res.out, res.err)
    return json.loads(res.out)


@pytest.fixture(scope="module")
def keys(tlab: Lab) -> dict[str, str]:
    """An RSA and an EC key pair and an AES key made through the HA slot: label -> ID."""
    made = {}
    for label, key_type in (("t-rsa", "rsa:2048"), ("t-ec", "ec:prime256v1"),
                            ("t-aes", "aes:256")):
        made[label] = ok_json(tlab, "keygen", "--type", key_type, "--label", label)["id"]
    return made


def export_public_key(lab: Lab, member: int, key_id: str, out: Path) -> Path:
    """The public key as PEM, read by pkcs11-tool from one member's own token."""
    der = out.with_suffix(".der")
    subprocess.run(["pkcs11-tool", "--module", find_tools().softhsm2, "--read-object",
                    "--type", "pubkey", "--id", key_id, "-o", str(der)],
                   env={"SOFTHSM2_CONF": str(lab.members()[member].softhsm2_conf)},
                   check=True, capture_output=True)
    subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(der),
                    "-out", str(out)], check=True, capture_output=True)
    return out


def openssl_verify(pem: Path, data: Path, signature: Path, *opts: str) -> str:
    proc = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pem), *opts,
                           "-signature", str(signature), str(data)],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip()


# ---------------------------------------------------------------------------
# slots, objects, mechanisms


def test_slots_are_numbered_as_the_menu_numbers_them(tlab: Lab) -> None:
    m0, m1 = tlab.members()
    slots = ok_json(tlab, "slots")["slots"]
    assert [(s["slot"], s["kind"], s["serial"], s["label"]) for s in slots] == [
        (1, "member", m0.serial, "member0"), (2, "member", m1.serial, "member1"),
        (3, "ha", tlab.group_serial, "labgroup")]
    assert slots[2]["description"] == "HA Virtual Card Slot" and slots[2]["present"] is True
    text = hacli(tlab, "slots").out
    assert re.search(rf"^3 +HA virtual +labgroup +{tlab.group_serial} ", text, re.MULTILINE)
    assert re.search(rf"^1 +member +member0 +{m0.serial} ", text, re.MULTILINE)
    # the menu's 14 Get Slot List: the same numbers, descriptions and labels
    menu = subprocess.run([HACLI, "--conf", str(tlab.conf_path), "ckdemo"], input="14\n0\n",
                          capture_output=True, text=True, timeout=60, check=True).stdout
    listed = re.findall(r"^slot#(\d+) - (.+) \((\S+), token present\)$", menu, re.MULTILINE)
    assert listed == [(str(s["slot"]), s["description"], s["label"]) for s in slots]


def test_objects_public_only_without_login(tlab: Lab, keys: dict[str, str]) -> None:
    public = ok_json(tlab, "objects")
    assert public["logged_in"] is False and public["slot"] == 3 and public["kind"] == "ha"
    rsa = [o for o in public["objects"] if o["label"] == "t-rsa"]
    assert rsa == [{"object_class": "CKO_PUBLIC_KEY", "key_type": "CKK_RSA", "label": "t-rsa",
                    "id": keys["t-rsa"], "token": True, "private": False, "bits": 2048,
                    "curve": None}]
    assert not any(o["label"] == "t-aes" for o in public["objects"])
    every = ok_json(tlab, "objects", "--login")
    assert every["logged_in"] is True
    classes = {(o["label"], o["object_class"]) for o in every["objects"]}
    assert {("t-rsa", "CKO_PRIVATE_KEY"), ("t-aes", "CKO_SECRET_KEY"),
            ("t-ec", "CKO_PUBLIC_KEY")} <= classes
    ec = next(o for o in every["objects"] if o["label"] == "t-ec")
    assert ec["curve"] == "secp256r1" and ec["id"] == keys["t-ec"]
    text = hacli(tlab, "objects", "--login").out
    assert re.search(rf"CKO_PRIVATE_KEY +CKK_RSA +2048 bits +t-rsa +{keys['t-rsa']} +token "
                     r"+private", text), text


def test_mechanisms_like_pkcs11_tool(tlab: Lab) -> None:
    doc = ok_json(tlab, "mechanisms", "--slot", "1")
    assert doc["slot"] == 1 and doc["kind"] == "member"
    by_name = {m["name"]: m for m in doc["mechanisms"]}
    assert by_name["SHA256-RSA-PKCS"] == {
        "name": "SHA256-RSA-PKCS", "ckm": "CKM_SHA256_RSA_PKCS", "value": 0x40,
        "min_key_size": 512, "max_key_size": 16384, "flags": ["sign", "verify"]}
    assert by_name["SHA-1"]["flags"] == ["digest"]
    # the lines pkcs11-tool -M prints for the member's own token
    tool = subprocess.run(["pkcs11-tool", "--module", find_tools().softhsm2, "-M"],
                          env={"SOFTHSM2_CONF": str(tlab.members()[0].softhsm2_conf)},
                          capture_output=True, text=True, check=True).stdout
    ours = hacli(tlab, "mechanisms", "--slot", "ha").out.splitlines()
    assert ours[0] == "Supported mechanisms of slot#3 (HA group labgroup):"
    for line in ("  SHA256-RSA-PKCS, keySize={512,16384}, sign, verify",
                 "  AES-CBC, keySize={16,32}, encrypt, decrypt, wrap",
                 "  ECDSA, keySize={112,521}, sign, verify, EC F_P, EC OID, EC uncompressed"):
        assert line in ours and line in tool.splitlines()


# ---------------------------------------------------------------------------
# keygen


def test_keygen_through_ha_is_on_every_member(tlab: Lab) -> None:
    m0, m1 = tlab.members()
    made = ok_json(tlab, "keygen", "--type", "ec:secp384r1", "--label", "t-every", "--id",
                   "c0ffee")
    assert made == {"slot": 3, "kind": "ha", "group": "labgroup", "serial": tlab.group_serial,
                    "type": "ec:secp384r1", "label": "t-every", "id": "c0ffee",
                    "objects": ["CKO_PUBLIC_KEY", "CKO_PRIVATE_KEY"]}
    # each member through its own slot: by serial, and by slot number
    for slot in (m0.serial, "2"):
        doc = ok_json(tlab, "objects", "--slot", slot, "--login")
        assert doc["kind"] == "member"
        mine = sorted((o["object_class"], o["id"], o["curve"]) for o in doc["objects"]
                      if o["label"] == "t-every")
        assert mine == [("CKO_PRIVATE_KEY", "c0ffee", "secp384r1"),
                        ("CKO_PUBLIC_KEY", "c0ffee", "secp384r1")], (slot, doc)
    assert doc["serial"] == m1.serial
    text = hacli(tlab, "keygen", "--type", "aes:32", "--label", "t-every-aes").out
    assert re.fullmatch(r"Generated aes:256 key 't-every-aes' \(ID [0-9a-f]{32}\) on slot#3 "
                        r"\(HA group labgroup\), on every member\n", text), text


def test_keygen_on_a_member_slot_stays_on_that_member(tlab: Lab) -> None:
    m0, m1 = tlab.members()
    made = ok_json(tlab, "keygen", "--slot", m1.serial, "--type", "rsa:1024",
                   "--label", "t-only-m1")
    assert made["kind"] == "member" and made["serial"] == m1.serial and made["slot"] == 2
    on = {s: [o for o in ok_json(tlab, "objects", "--slot", s)["objects"]
              if o["label"] == "t-only-m1"] for s in (m0.serial, m1.serial)}
    assert on[m0.serial] == [] and [o["id"] for o in on[m1.serial]] == [made["id"]]


# ---------------------------------------------------------------------------
# sign, verify, encrypt, decrypt, random


def test_sign_then_verify_and_openssl_agrees(tlab: Lab, keys: dict[str, str],
                                            tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 7)
    rsa_pem = export_public_key(tlab, 1, keys["t-rsa"], tmp_path / "rsa.pem")
    for mechanism, opts in (("SHA256-RSA-PKCS", ()),
                            ("SHA256-RSA-PKCS-PSS", ("-sigopt", "rsa_padding_mode:pss",
                                                     "-sigopt", "rsa_pss_saltlen:32"))):
        sig = tmp_path / f"{mechanism}.sig"
        res = hacli(tlab, "sign", "--key", "t-rsa", "-m", mechanism, "--in", str(data),
                    "--out", str(sig))
        assert (res.code, res.out) == (0, f"Wrote 256 bytes to {sig}\n"), res.err
        res = hacli(tlab, "verify", "--key", "t-rsa", "-m", mechanism, "--in", str(data),
                    "--signature", str(sig))
        assert (res.code, res.out) == (0, "Signature is valid.\n"), res.err
        assert openssl_verify(rsa_pem, data, sig, *opts) == "Verified OK"

    # ECDSA: PKCS#11 signs r||s; openssl reads DER
    from asn1crypto.algos import DSASignature

    doc = ok_json(tlab, "sign", "--key", "t-ec", "-m", "ECDSA-SHA256", "--in", str(data))
    raw = bytes.fromhex(doc["signature"])
    assert doc["bytes"] == len(raw) == 64 and doc["mechanism"] == "ECDSA-SHA256"
    (tmp_path / "ec.sig").write_bytes(raw)
    der = tmp_path / "ec-signature.der"
    der.write_bytes(DSASignature.from_p1363(raw).dump())
    ec_pem = export_public_key(tlab, 0, keys["t-ec"], tmp_path / "ec.pem")
    assert openssl_verify(ec_pem, data, der) == "Verified OK"
    assert ok_json(tlab, "verify", "--key", "t-ec", "-m", "ecdsa-sha256", "--in", str(data),
                   "--signature", str(tmp_path / "ec.sig"))["valid"] is True

    # a bad signature: exit 1, one clear line (and valid: false in the JSON)
    data.write_bytes(data.read_bytes() + b"!")
    res = hacli(tlab, "verify", "--key", "t-rsa", "-m", "SHA256-RSA-PKCS", "--in", str(data),
                "--signature", str(tmp_path / "SHA256-RSA-PKCS.sig"))
    assert_one_error_line(res, 1)
    assert "CKR_SIGNATURE_INVALID" in res.err and res.out == ""
    res = hacli(tlab, "verify", "--key", "t-ec", "-m", "ECDSA-SHA256", "--in", str(data),
                "--signature", str(tmp_path / "ec.sig"), "--json")
    assert_one_error_line(res, 1)
    assert json.loads(res.out)["valid"] is False


def test_encrypt_decrypt_round_trips(tlab: Lab, keys: dict[str, str], tmp_path: Path) -> None:
    plain = tmp_path / "plain.bin"
    plain.write_bytes(bytes(range(256)) * 4 + b"tail")
    enc, dec = tmp_path / "c.bin", tmp_path / "d.bin"
    for mechanism, extra in (("AES-CBC-PAD", ("--iv", IV)), ("AES-ECB-PAD", ())):
        assert hacli(tlab, "encrypt", "--key", "t-aes", "-m", mechanism, *extra,
                     "--in", str(plain), "--out", str(enc)).code == 0
        assert len(enc.read_bytes()) == 1040  # padded to 16-byte blocks, no IV inside
        assert hacli(tlab, "decrypt", "--key", "t-aes", "-m", mechanism, *extra,
                     "--in", str(enc), "--out", str(dec)).code == 0
        assert dec.read_bytes() == plain.read_bytes()
    # RSA-OAEP: openssl encrypts with the public key pkcs11-tool exported
    pem = export_public_key(tlab, 0, keys["t-rsa"], tmp_path / "rsa.pem")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"a short secret")
    subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", str(pem),
                    "-pkeyopt", "rsa_padding_mode:oaep", "-in", str(secret), "-out", str(enc)],
                   check=True, capture_output=True)
    doc = ok_json(tlab, "decrypt", "--key", "t-rsa", "-m", "RSA-PKCS-OAEP", "--in", str(enc))
    assert bytes.fromhex(doc["plaintext"]) == b"a short secret"


def test_stdin_and_stdout(tlab: Lab, keys: dict[str, str]) -> None:
    """--in - and stdout carry raw bytes through a pipe (a real process)."""
    def pipe(*args: str, data: bytes = b"") -> bytes:
        proc = subprocess.run([HACLI, "--conf", str(tlab.conf_path), *args], input=data,
                              capture_output=True, timeout=60, check=False)
        assert (proc.returncode, proc.stderr) == (0, b""), proc.stderr
        return proc.stdout

    plain = bytes(range(200))
    common = ("--key", "t-aes", "-m", "AES-CBC-PAD", "--iv", IV, "--in", "-")
    cipher = pipe("encrypt", *common, "--out", "-", data=plain)
    assert len(cipher) == 208
    assert pipe("decrypt", *common, data=cipher) == plain
    assert len(pipe("random", "--bytes", "37")) == 37


def test_random(tlab: Lab, tmp_path: Path) -> None:
    out = tmp_path / "r.bin"
    res = hacli(tlab, "random", "--bytes", "33", "--out", str(out))
    assert (res.code, res.out) == (0, f"Wrote 33 bytes to {out}\n")
    assert len(out.read_bytes()) == 33
    doc = ok_json(tlab, "random", "--bytes", "20", "--slot", tlab.members()[0].serial)
    assert doc["kind"] == "member" and doc["bytes"] == 20 and len(bytes.fromhex(doc["hex"])) == 20
    assert re.fullmatch(r"[0-9a-f]{32}\n", hacli(tlab, "random", "--bytes", "16", "--hex").out)
    assert_one_error_line(hacli(tlab, "random", "--bytes", "0"), 2)


# ---------------------------------------------------------------------------
# bad input: one Error line, the documented exit code, nothing written


def test_bad_input_writes_nothing(tlab: Lab, keys: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(b"data")
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")  # an existing --out stays as it was
    bad_pin = tmp_path / "bad-pin"
    bad_pin.write_text("not-the-pin\n")
    bad_pin.chmod(0o600)  # owner-only: no mode warning besides the one Error line
    sign = ("sign", "--in", str(data), "--out", str(out))
    cases = [
        (1, "CKR_PIN_INCORRECT", (*sign, "--key", "t-rsa", "-m", "SHA256-RSA-PKCS",
                                  "--pin-file", str(bad_pin))),
        (2, "no private key or secret key labelled 'nope'",
         (*sign, "--key", "nope", "-m", "SHA256-RSA-PKCS")),
        (2, "'SHA257-RSA' is an unknown mechanism; one of: SHA1-RSA-PKCS,",
         (*sign, "--key", "t-rsa", "-m", "SHA257-RSA")),
        (2, "'AES-CBC-PAD' is not a mechanism to sign with",
         (*sign, "--key", "t-aes", "-m", "AES-CBC-PAD")),
        (2, "ECDSA-SHA256 needs a CKK_EC key", (*sign, "--key", "t-rsa", "-m", "ECDSA-SHA256")),
        (1, f"cannot read --in {tmp_path / 'missing'}: no such file or directory",
         ("sign", "--in", str(tmp_path / "missing"), "--out", str(out), "--key", "t-rsa",
          "-m", "SHA256-RSA-PKCS")),
        (2, "AES-CBC-PAD needs an IV", ("encrypt", "--in", str(data), "--out", str(out),
                                        "--key", "t-aes", "-m", "AES-CBC-PAD")),
        (2, "the IV of AES-CBC-PAD is 16 bytes, not 2",
         ("encrypt", "--in", str(data), "--out", str(out), "--key", "t-aes", "-m",
          "AES-CBC-PAD", "--iv", "0102")),
        (2, "'zz' is not hex", ("encrypt", "--in", str(data), "--out", str(out), "--key",
                                "t-aes", "-m", "AES-CBC-PAD", "--iv", "zz")),
        (2, "--slot '9' is not 'ha', a slot number (1, 2, 3) or a member serial",
         (*sign, "--key", "t-rsa", "-m", "SHA256-RSA-PKCS", "--slot", "9")),
        (2, "--out - and --json both write to stdout",
         ("random", "--bytes", "4", "--out", "-", "--json")),
        (2, "'rsa:99' is not a key type", ("keygen", "--type", "rsa:99", "--label", "x")),
        (2, "no HA group named 'nogroup'", ("random", "--bytes", "4", "--group", "nogroup")),
    ]
    for code, message, args in cases:
        res = hacli(tlab, *args)
        assert_one_error_line(res, code)
        assert message in res.err, (args, res.err)
        assert out.read_bytes() == b"old", args
        assert "not-the-pin" not in res.out + res.err  # a PIN is never printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-pin", "data.bin", "out.bin"]


def test_pin_sources_and_the_prompt(tlab: Lab, keys: dict[str, str], tmp_path: Path) -> None:
    import pexpect

    data = tmp_path / "data.bin"
    data.write_bytes(b"data")
    sign = ("sign", "--key", "t-rsa", "-m", "SHA256-RSA-PKCS", "--in", str(data))
    # $HACLI_PIN comes before the lab's PIN file (a wrong one shows it is used)
    res = run("--conf", str(tlab.conf_path), *sign, env={"HACLI_PIN": "wrong-env-pin"})
    assert_one_error_line(res, 1)
    assert "CKR_PIN_INCORRECT" in res.err and "wrong-env-pin" not in res.out + res.err
    # no source (a copy of the configuration without the lab's): a hidden prompt on a
    # terminal, an Error line and no prompt when stdin is not one
    conf = tmp_path / "Chrystoki.conf"
    conf.write_text(re.sub(r"^\s*LabDir = .*\n", "", tlab.conf_path.read_text(),
                           flags=re.MULTILINE))
    env = {k: v for k, v in os.environ.items() if k != "HACLI_PIN"}
    argv = ["--conf", str(conf), *sign, "--out", str(tmp_path / "sig")]
    proc = subprocess.run([HACLI, *argv], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert_one_error_line(Result(proc.returncode, proc.stdout, proc.stderr), 2)
    assert "no PIN: give --pin-file FILE or set HACLI_PIN" in proc.stderr
    child = pexpect.spawn(HACLI, argv, env=env, encoding="utf-8", timeout=30)
    child.expect_exact("Enter PIN: ")
    child.sendline(tlab.pin())
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and tlab.pin() not in child.before
    assert "Wrote 256 bytes to" in child.before and (tmp_path / "sig").stat().st_size == 256


def test_an_ambiguous_label_names_the_ids(tlab: Lab, tmp_path: Path) -> None:
    first = ok_json(tlab, "keygen", "--type", "aes:128", "--label", "t-twice")["id"]
    second = ok_json(tlab, "keygen", "--type", "aes:128", "--label", "t-twice")["id"]
    data = tmp_path / "d"
    data.write_bytes(b"0123456789abcdef")
    args = ("encrypt", "--key", "t-twice", "-m", "AES-ECB", "--in", str(data))
    res = hacli(tlab, *args, "--out", str(tmp_path / "x"))
    assert_one_error_line(res, 2)
    assert "2 keys match: secret key or public key labelled 't-twice'; choose one by its ID " \
           "(--id): " in res.err and first in res.err and second in res.err
    assert not (tmp_path / "x").exists()
    assert ok_json(tlab, *args, "--id", second)["bytes"] == 16


# ---------------------------------------------------------------------------
# completions


def test_completions_offer_groups_serials_and_public_key_labels(tlab: Lab,
                                                                keys: dict[str, str]) -> None:
    from click.shell_completion import ShellComplete

    from hacli.cli.main import cli

    def complete(*args: str, incomplete: str = "") -> list[str]:
        shell = ShellComplete(cli, {}, "hacli", "_HACLI_COMPLETE")
        return [c.value for c in shell.get_completions(
            ["--conf", str(tlab.conf_path), *args], incomplete)]

    m0, m1 = tlab.members()
    assert complete("sign", "--group") == ["labgroup"]
    assert complete("objects", "--slot") == ["ha", m0.serial, m1.serial]
    assert complete("random", "--slot", incomplete=m1.serial[:3]) == [m1.serial]
    labels = complete("verify", "--key", incomplete="t-")
    assert {"t-rsa", "t-ec"} <= set(labels) and "t-aes" not in labels  # public objects only
    assert complete("sign", "--key", incomplete="zz") == []
