"""Independent checks for ``bench/soak.py``: nothing here calls an HSM.

* :func:`rsa_pkcs1_sha256_verify` and :func:`ecdsa_p256_verify` check a
  signature against a public key with plain integer arithmetic (standard
  library only: the project has no crypto dependency), so a signature the HA
  slot returns is judged by something other than the HA slot.
* :func:`aes_key_wrap` is RFC 3394 built on a caller's AES-ECB block function:
  the soak makes the blob of a known key with one wrapping key's ECB and checks
  what ``C_UnwrapKey`` makes of it.
* :func:`parse_pkcs11_tool_objects` reads ``pkcs11-tool -O`` into identities.
* :func:`union_length`, :func:`percentile`: report arithmetic.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable

# ---------------------------------------------------------------------------
# RSA PKCS#1 v1.5 with SHA-256

#: DER DigestInfo prefix of a SHA-256 digest (RFC 8017, 9.2 note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def rsa_pkcs1_sha256_verify(modulus: int, exponent: int, data: bytes, signature: bytes) -> bool:
    """True when *signature* is the RSASSA-PKCS1-v1_5 SHA-256 signature of *data*."""
    k = (modulus.bit_length() + 7) // 8
    if len(signature) != k:
        return False
    s = int.from_bytes(signature, "big")
    if s >= modulus:
        return False
    em = pow(s, exponent, modulus).to_bytes(k, "big")
    t = SHA256_DIGEST_INFO + hashlib.sha256(data).digest()
    expected = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    return em == expected


# ---------------------------------------------------------------------------
# ECDSA on P-256 (FIPS 186-4, SEC 1 4.1.4), raw r||s signatures as PKCS#11 gives them

P256_P = 2**256 - 2**224 + 2**192 + 2**96 - 1
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
P256_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
P256_G = (
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
)

_Jac = tuple[int, int, int]  # Jacobian coordinates; Z == 0 is the point at infinity
_INF: _Jac = (1, 1, 0)


def _double(pt: _Jac) -> _Jac:
    x, y, z = pt
    if z == 0 or y == 0:
        return _INF
    p = P256_P
    yy = y * y % p
    s = 4 * x * yy % p
    zz = z * z % p
    m = 3 * (x - zz) * (x + zz) % p  # a = -3
    x3 = (m * m - 2 * s) % p
    y3 = (m * (s - x3) - 8 * yy * yy) % p
    z3 = 2 * y * z % p
    return x3, y3, z3


def _add(p1: _Jac, p2: _Jac) -> _Jac:
    if p1[2] == 0:
        return p2
    if p2[2] == 0:
        return p1
    p = P256_P
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    z1z1 = z1 * z1 % p
    z2z2 = z2 * z2 % p
    u1 = x1 * z2z2 % p
    u2 = x2 * z1z1 % p
    s1 = y1 * z2 * z2z2 % p
    s2 = y2 * z1 * z1z1 % p
    if u1 == u2:
        return _double(p1) if s1 == s2 else _INF
    h = (u2 - u1) % p
    r = (s2 - s1) % p
    hh = h * h % p
    hhh = h * hh % p
    v = u1 * hh % p
    x3 = (r * r - hhh - 2 * v) % p
    y3 = (r * (v - x3) - s1 * hhh) % p
    z3 = h * z1 * z2 % p
    return x3, y3, z3


def _affine_x(pt: _Jac) -> int | None:
    x, _, z = pt
    if z == 0:
        return None
    return x * pow(z * z, -1, P256_P) % P256_P


def p256_on_curve(x: int, y: int) -> bool:
    p = P256_P
    return 0 <= x < p and 0 <= y < p and (y * y - (x * x * x - 3 * x + P256_B)) % p == 0


def p256_multiply(k: int, point: tuple[int, int] = P256_G) -> tuple[int, int] | None:
    """k * point in affine coordinates (None for infinity); for tests and sanity checks."""
    acc = _INF
    base: _Jac = (point[0], point[1], 1)
    for bit in bin(k)[2:]:
        acc = _double(acc)
        if bit == "1":
            acc = _add(acc, base)
    if acc[2] == 0:
        return None
    zinv = pow(acc[2], -1, P256_P)
    return acc[0] * zinv * zinv % P256_P, acc[1] * zinv * zinv * zinv % P256_P


def ec_point_from_der(value: bytes) -> tuple[int, int]:
    """The affine point of a ``CKA_EC_POINT`` (a DER OCTET STRING around 04||X||Y)."""
    raw = value
    if raw[:1] == b"\x04" and len(raw) in (67, 68) and raw[1] in (0x41, 0x81):
        raw = raw[3:] if raw[1] == 0x81 else raw[2:]
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError(f"not an uncompressed P-256 point ({len(value)} bytes)")
    return int.from_bytes(raw[1:33], "big"), int.from_bytes(raw[33:], "big")


def ecdsa_p256_verify(point: tuple[int, int], digest: bytes, signature: bytes) -> bool:
    """True when the raw signature ``r||s`` (64 bytes) is valid for *digest* under *point*."""
    if len(signature) != 64 or not p256_on_curve(*point):
        return False
    n = P256_N
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    if not (1 <= r < n and 1 <= s < n):
        return False
    e = int.from_bytes(digest[:32], "big")
    w = pow(s, -1, n)
    u1, u2 = e * w % n, r * w % n
    # Shamir's trick: u1*G + u2*Q in one pass of doublings
    g: _Jac = (P256_G[0], P256_G[1], 1)
    q: _Jac = (point[0], point[1], 1)
    gq = _add(g, q)
    acc = _INF
    for i in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        acc = _double(acc)
        b1, b2 = (u1 >> i) & 1, (u2 >> i) & 1
        if b1 and b2:
            acc = _add(acc, gq)
        elif b1:
            acc = _add(acc, g)
        elif b2:
            acc = _add(acc, q)
    x = _affine_x(acc)
    return x is not None and x % n == r


# ---------------------------------------------------------------------------
# RFC 3394 AES key wrap over an AES-ECB block function

RFC3394_IV = bytes.fromhex("A6A6A6A6A6A6A6A6")


def aes_key_wrap(ecb_encrypt: Callable[[bytes], bytes], key_data: bytes) -> bytes:
    """RFC 3394 wrap of *key_data* (a multiple of 8 bytes, at least 16) with the
    wrapping key behind *ecb_encrypt* (one 16-byte block in, one out)."""
    if len(key_data) % 8 or len(key_data) < 16:
        raise ValueError("RFC 3394 wraps 16 bytes or more, in 8-byte blocks")
    n = len(key_data) // 8
    a = RFC3394_IV
    r = [key_data[8 * i : 8 * i + 8] for i in range(n)]
    for j in range(6):
        for i in range(n):
            b = ecb_encrypt(a + r[i])
            t = n * j + i + 1
            a = (int.from_bytes(b[:8], "big") ^ t).to_bytes(8, "big")
            r[i] = b[8:]
    return a + b"".join(r)


# ---------------------------------------------------------------------------
# pkcs11-tool -O

#: An object's identity as the HA engine matches replicas: class, key type, label, CKA_ID.
Identity = tuple[str, str, str, str]

_HEADER = re.compile(r"^(?P<cls>[A-Z][A-Za-z ]*? [Oo]bject)(?:;\s*|\s+|$)(?P<rest>.*)$")


def parse_pkcs11_tool_objects(text: str) -> Counter[Identity]:
    """``pkcs11-tool -O`` output -> a multiset of (class, key type, label, id hex).

    An object starts at an unindented line (``Secret Key Object; AES length 32``,
    ``Data object 123``); ``label:`` and ``ID:`` follow indented.  The key
    length and the access flags are left out: SoftHSM2 prints them differently
    for a key made on a member and for its replica (``local``, lengths).
    """
    objects: Counter[Identity] = Counter()
    current: dict[str, str] | None = None

    def flush() -> None:
        if current is not None:
            objects[(current["cls"], current["type"], current.get("label", ""),
                     current.get("id", ""))] += 1

    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            m = _HEADER.match(line.strip())
            if m is None:
                continue  # a warning line, not an object
            flush()
            rest = m.group("rest").split()
            # "Data object 1234": the number is the object's handle, not part of it
            kind = rest[0] if rest and not m.group("cls").startswith("Data") else ""
            current = {"cls": m.group("cls"), "type": kind}
        elif current is not None:
            key, _, value = line.strip().partition(":")
            if key == "label":
                current["label"] = value.strip()
            elif key == "ID":
                current["id"] = value.strip().lower()
    flush()
    return objects


# ---------------------------------------------------------------------------
# report arithmetic


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by a set of [start, end] intervals."""
    total = 0.0
    cur_start = cur_end = None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            if cur_end is not None and cur_start is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_end is not None and cur_start is not None:
        total += cur_end - cur_start
    return total


def merge_intervals(intervals: Iterable[tuple[float, float]],
                    gap: float = 0.0) -> list[tuple[float, float]]:
    """Overlapping (or closer than *gap*) intervals joined, sorted."""
    out: list[list[float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def percentile(sorted_values: list[float], q: float) -> float:
    """The *q*-quantile (0..1) of an already sorted list, nearest rank; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


__all__ = [
    "P256_G",
    "P256_N",
    "SHA256_DIGEST_INFO",
    "Identity",
    "aes_key_wrap",
    "ec_point_from_der",
    "ecdsa_p256_verify",
    "merge_intervals",
    "p256_multiply",
    "p256_on_curve",
    "parse_pkcs11_tool_objects",
    "percentile",
    "rsa_pkcs1_sha256_verify",
    "union_length",
]
