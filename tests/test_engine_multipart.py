"""Multi-part operations (C_xInit / C_xUpdate / C_xFinal) through the engine, on the lab.

p11-kit 0.24.1's RPC forwards only some mechanisms: SHA256_RSA_PKCS (sign,
verify), SHA256 (digest) and AES_ECB (encrypt, decrypt) are among them.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginehelpers import make_engines
from pkcs11 import KeyType, Mechanism

from hacli.engine import CKRError, Engine

pytestmark = pytest.mark.lab

SIGN = Mechanism.SHA256_RSA_PKCS
CHUNKS = [b"multi-", b"part ", b"", os.urandom(3000), b"signature" * 50]


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def test_multipart_sign_verify_digest_encrypt(healthy_lab, engine_factory) -> None:
    engine = engine_factory(healthy_lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(healthy_lab.pin())
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="mp-rsa")
        aes = s.generate_key(KeyType.AES, 256, label="mp-aes")
        data = b"".join(CHUNKS)
        # sign: several chunks give the single-part signature (PKCS#1 v1.5 is deterministic)
        single = s.sign(priv, data, mechanism=SIGN)
        for _ in range(2):  # the operation session is reused from the pool
            s.sign_init(priv, mechanism=SIGN)
            assert s.active_operations()["sign"] in {m.serial for m in g.members}
            for c in CHUNKS:
                s.sign_update(c)
            assert s.sign_final() == single
        assert s.active_operations() == {}
        # verify
        s.verify_init(pub, mechanism=SIGN)
        for c in CHUNKS:
            s.verify_update(c)
        assert s.verify_final(single) is True
        s.verify_init(pub, mechanism=SIGN)
        s.verify_update(data + b"!")
        assert s.verify_final(single) is False
        s.verify_init(pub, mechanism=SIGN)
        s.verify_update(data)
        assert s.verify_final(single[:-1]) is False  # wrong length: invalid, op ended
        # digest
        s.digest_init(Mechanism.SHA256)
        for c in CHUNKS:
            s.digest_update(c)
        assert s.digest_final() == s.digest(data) == hashlib.sha256(data).digest()
        # two kinds at once in one session, and sessions in parallel threads
        results: dict[int, bytes] = {}

        def worker(i: int) -> None:
            with g.open_session() as ws:
                ws.sign_init(priv, mechanism=SIGN)
                ws.digest_init()
                for c in CHUNKS:
                    ws.sign_update(c)
                    ws.digest_update(c)
                assert ws.digest_final() == hashlib.sha256(data).digest()
                results[i] = ws.sign_final()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == {i: single for i in range(6)}
        for h in (pub, priv, aes):
            s.destroy_object(h)


@pytest.mark.parametrize("mechanism,iv", [(Mechanism.AES_ECB, None),
                                           (Mechanism.AES_CBC_PAD, bytes(range(16))),
                                           (Mechanism.AES_CBC, bytes(range(16, 32)))])
def test_multipart_encrypt_decrypt(healthy_lab, engine_factory, mechanism, iv) -> None:
    """AES in parts through the HA slot on lab members (the lab's p11-kit
    carries IV parameters and empty outputs): the same as single-part."""
    engine = engine_factory(healthy_lab)
    g = engine.group()
    pad = mechanism == Mechanism.AES_CBC_PAD
    with g.open_session() as s:
        s.login(healthy_lab.pin())
        aes = s.generate_key(KeyType.AES, 256, label="mp-aes")
        plain = os.urandom(16 * 9 + (5 if pad else 0))
        s.encrypt_init(aes, mechanism=mechanism, mechanism_param=iv)
        parts = [s.encrypt_update(plain[:10]), s.encrypt_update(plain[10:100]),
                 s.encrypt_update(plain[100:])]
        assert parts[0] == b""  # not a whole block yet: an empty output travels
        parts.append(s.encrypt_final())
        cipher = b"".join(parts)
        assert cipher == s.encrypt(aes, plain, mechanism=mechanism, mechanism_param=iv)
        s.decrypt_init(aes, mechanism=mechanism, mechanism_param=iv)
        out = s.decrypt_update(cipher[:40]) + s.decrypt_update(cipher[40:])
        assert out + s.decrypt_final() == plain
        if not pad:
            # an error ends the operation: a partial block at final
            s.encrypt_init(aes, mechanism=mechanism, mechanism_param=iv)
            s.encrypt_update(b"12345")
            with pytest.raises(CKRError) as exc:
                s.encrypt_final()
            assert exc.value.ckr == "CKR_DATA_LEN_RANGE"
            with pytest.raises(CKRError) as exc:
                s.encrypt_update(bytes(16))
            assert exc.value.ckr == "CKR_OPERATION_NOT_INITIALIZED"
        s.encrypt_init(aes, mechanism=mechanism, mechanism_param=iv)  # a new one starts
        assert len(s.encrypt_update(bytes(16))) == 16
        assert len(s.encrypt_final()) == (16 if pad else 0)
        s.destroy_object(aes)
    assert all(m.alive and m.failures == 0 for m in g.members)


def test_operation_state_rules(healthy_lab, engine_factory) -> None:
    engine = engine_factory(healthy_lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(healthy_lab.pin())
        _pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="mp-rules")
        aes = s.generate_key(KeyType.AES, 128, label="mp-rules-aes")
        for call in (lambda: s.sign_update(b"x"), s.sign_final, s.digest_final,
                     lambda: s.verify_final(b"x"), lambda: s.encrypt_update(b"x"),
                     s.decrypt_final):
            with pytest.raises(CKRError) as exc:
                call()
            assert exc.value.ckr == "CKR_OPERATION_NOT_INITIALIZED"
        s.sign_init(priv, mechanism=SIGN)
        with pytest.raises(CKRError) as exc:
            s.sign_init(priv, mechanism=SIGN)
        assert exc.value.ckr == "CKR_OPERATION_ACTIVE"
        s.sign_update(b"still fine")  # the active operation is untouched
        s.sign_final()
        with pytest.raises(CKRError) as exc:
            s.sign_final()  # final ended it
        assert exc.value.ckr == "CKR_OPERATION_NOT_INITIALIZED"
        # init errors come from C_xInit and leave no operation behind
        with pytest.raises(CKRError) as exc:
            s.sign_init(aes, mechanism=Mechanism.SHA256)
        assert exc.value.ckr == "CKR_MECHANISM_INVALID"
        with pytest.raises(CKRError) as exc:
            s.sign_init(999_999, mechanism=SIGN)
        assert exc.value.ckr == "CKR_OBJECT_HANDLE_INVALID"
        assert s.active_operations() == {}
        with pytest.raises(CKRError) as exc:
            s.digest_update(12345)  # type: ignore[arg-type]
        assert exc.value.ckr == "CKR_OPERATION_NOT_INITIALIZED"
        s.digest_init()
        with pytest.raises(CKRError) as exc:
            s.digest_update(12345)  # type: ignore[arg-type]
        assert exc.value.ckr == "CKR_ARGUMENTS_BAD"
        assert "digest" not in s.active_operations()  # an error ends the operation
        # closing a session ends its operations
        s.digest_init()
        s.digest_update(b"abc")
        s.sign_init(priv, mechanism=SIGN)
    with pytest.raises(CKRError) as exc:
        s.digest_update(b"x")
    assert exc.value.ckr == "CKR_SESSION_HANDLE_INVALID"
    assert all(m.alive and m.failures == 0 for m in g.members)


def test_engine_close_ends_operations(healthy_lab, engine_factory) -> None:
    engine = engine_factory(healthy_lab)
    s = engine.group().open_session()
    s.login(healthy_lab.pin())
    _pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="mp-close")
    s.sign_init(priv, mechanism=SIGN)
    s.sign_update(b"left open")
    op = s._ops.get("sign")
    assert op is not None and op.driver is not None
    helper = op.driver._thread
    assert helper.is_alive()
    engine.close()
    helper.join(5)
    assert not helper.is_alive()  # no helper left parked in an operation
