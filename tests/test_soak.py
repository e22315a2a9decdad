"""The soak (``bench/soak.py``) in its 20-second version, and its independent checkers.

``test_soak_20_seconds`` runs the real thing in a child process: a private
3-member lab, 8 threads on the HA slot, members crashed and frozen for
20 seconds (about 23 s in all).  It passes only when the engine loses no call
while a member is in service, gives no wrong result, brings every member back
within AutoReconnectInterval + 2 s of its restore, leaves identical token
objects on every member after synchronisation, and leaks nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "bench" / "soak.py"
sys.path.insert(0, str(ROOT / "bench"))
soak_check = importlib.import_module("soak_check")

pytestmark = pytest.mark.lab


@pytest.mark.soak
def test_soak_20_seconds() -> None:
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--seconds", "20", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.stdout.strip(), f"no report; exit {proc.returncode}; stderr: {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    summary = {k: report.get(k) for k in ("mode", "seed", "calls", "failed", "lost", "wrong",
                                          "failovers", "recoveries", "outage_s", "errors")}
    problems = "\n".join(report["problems"])
    assert proc.returncode == 0, f"soak failed: {summary}\n{problems}"
    assert report["passed"] is True
    assert report["calls"] > 1000 and report["lost"] == 0 and report["wrong"] == 0
    assert report["faults"], "the chaos thread injected no fault"
    assert all(f["back_in_time"] for f in report["faults"])
    assert report["objects"]["identical"] is True
    assert report["objects"]["destroyed_back"] == [] and report["objects"]["kept_missing"] == []
    assert report["leaks"] == {"threads": [], "connections": {}, "workdirs": []}
    assert not report["lab_processes_left"]


# ---------------------------------------------------------------------------
# the checkers, against known answers (no lab)


def _prime(rng: random.Random, bits: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return n


def test_rsa_pkcs1_sha256_verify() -> None:
    rng = random.Random(7)
    e = 65537
    while True:
        p, q = _prime(rng, 512), _prime(rng, 512)
        if p != q and (p - 1) % e and (q - 1) % e:
            break
    n, d = p * q, pow(e, -1, (p - 1) * (q - 1))
    k = (n.bit_length() + 7) // 8
    data = b"soak"
    t = soak_check.SHA256_DIGEST_INFO + hashlib.sha256(data).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    sig = pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")
    assert soak_check.rsa_pkcs1_sha256_verify(n, e, data, sig)
    assert not soak_check.rsa_pkcs1_sha256_verify(n, e, b"soaK", sig)
    assert not soak_check.rsa_pkcs1_sha256_verify(n, e, data, sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not soak_check.rsa_pkcs1_sha256_verify(n, e, data, sig[1:])


def test_ecdsa_p256_verify_rfc6979_vector() -> None:
    # RFC 6979 A.2.5, P-256 with SHA-256, message "sample"
    x = 0xC9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721
    point = soak_check.p256_multiply(x)
    assert point == (0x60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6,
                     0x7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299)
    sig = bytes.fromhex("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716"
                        "F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8")
    digest = hashlib.sha256(b"sample").digest()
    assert soak_check.ecdsa_p256_verify(point, digest, sig)
    assert not soak_check.ecdsa_p256_verify(point, hashlib.sha256(b"samplE").digest(), sig)
    assert not soak_check.ecdsa_p256_verify(point, digest, sig[:32] + bytes(32))
    der = b"\x04\x41\x04" + point[0].to_bytes(32, "big") + point[1].to_bytes(32, "big")
    assert soak_check.ec_point_from_der(der) == point


def test_aes_key_wrap_structure() -> None:
    # With an identity "cipher" the RFC 3394 steps reduce to XORs of the counter:
    # checks the loop order and the counter t = n*j + i.
    wrapped = soak_check.aes_key_wrap(lambda block: block, bytes(16))
    a = int.from_bytes(soak_check.RFC3394_IV, "big")
    for t in range(1, 13):
        a ^= t
    assert wrapped[:8] == a.to_bytes(8, "big") and wrapped[8:] == bytes(16)
    with pytest.raises(ValueError):
        soak_check.aes_key_wrap(lambda block: block, bytes(12))


PKCS11_TOOL_OUTPUT = """\
Secret Key Object; AES length 32
  label:      soak-tk-1-1
  ID:         4CD15545584BFAB0
  Usage:      encrypt, decrypt
  Access:     sensitive, always sensitive, extractable, local
warning: PKCS11 function C_GetAttributeValue(VALUE) failed: rv = CKR_ATTRIBUTE_SENSITIVE (0x11)
Public Key Object; EC  EC_POINT 256 bits
  EC_POINT:   0441049
  label:      soak-ec
  ID:         01d8
  Usage:      verify
Secret Key Object; AES
  label:      soak-tk-1-1
  ID:         4cd15545584bfab0
Data object 1234
  label:      'x'
"""


def test_parse_pkcs11_tool_objects() -> None:
    objects = soak_check.parse_pkcs11_tool_objects(PKCS11_TOOL_OUTPUT)
    assert objects == {
        ("Secret Key Object", "AES", "soak-tk-1-1", "4cd15545584bfab0"): 2,
        ("Public Key Object", "EC", "soak-ec", "01d8"): 1,
        ("Data object", "", "'x'", ""): 1,
    }


def test_report_arithmetic() -> None:
    assert soak_check.union_length([(0, 1), (0.5, 2), (3, 4)]) == 3.0
    assert soak_check.merge_intervals([(3, 4), (0, 1), (1.1, 2)], gap=0.2) == [(0, 2), (3, 4)]
    assert soak_check.percentile([], 0.5) == 0.0
    assert soak_check.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert soak_check.percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
