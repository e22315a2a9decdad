"""Engine against the lab: real members (SoftHSM2 tokens behind p11-kit servers).

No mock of PKCS#11.  Members are crashed (SIGKILL), frozen (SIGSTOP) and
restored through the lab API.  Waits poll for conditions, not fixed sleeps.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginehelpers import codes, lab_config, make_engines, wait_for
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine import CKRError, Engine, provision_transport_key
from hacli.engine.halog import LOG_NAME

pytestmark = pytest.mark.lab


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)

SIGN = Mechanism.SHA256_RSA_PKCS


def test_origin_document_scenario(healthy_lab, engine_factory, tmp_path) -> None:
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    engine = engine_factory(lab)
    g = engine.group()
    assert codes(engine) == {m0: "CKR_OK", m1: "CKR_OK", "group": "CKR_OK"}
    s = g.open_session()
    s.login(lab.pin())
    _pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="origin", token=True)
    try:
        lab.fail(m0)
        for _ in range(4):  # the application sees no error
            s.sign(priv, b"origin", mechanism=SIGN)
        assert codes(engine) == {m0: "CKR_DEVICE_ERROR", m1: "CKR_OK", "group": "CKR_OK"}
        assert codes(engine) == {m0: "CKR_TOKEN_NOT_PRESENT", m1: "CKR_OK", "group": "CKR_OK"}
        # a fresh process notices the dead member by probing, without a PIN
        fresh = engine_factory(lab)
        assert codes(fresh)[m0] == "CKR_DEVICE_ERROR"
        lab.restore(m0)
        # interval (1 s) passes, one call through the group recovers the member
        assert wait_for(lambda: (s.generate_random(8), codes(engine)[m0] == "CKR_OK")[1])
        assert codes(engine) == {m0: "CKR_OK", m1: "CKR_OK", "group": "CKR_OK"}
        before = g.op_counts()[m0]
        for _ in range(6):
            s.sign(priv, b"origin", mechanism=SIGN)
        assert g.op_counts()[m0] > before  # back in balancing, logged in again
    finally:
        s.destroy_object(priv)
        s.close()
    log = (tmp_path / "halog" / LOG_NAME).read_text()
    assert f"{lab.group_label} {m0} failed CKR_DEVICE_ERROR" in log
    assert f"{lab.group_label} {m0} recovered -" in log
    assert lab.pin() not in log


def test_replication_and_destroy(healthy_lab, engine_factory) -> None:
    lab = healthy_lab
    serials = [m.serial for m in lab.members()]
    engine = engine_factory(lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="repl-rsa", token=True)
        epub, epriv = s.generate_keypair(KeyType.EC, curve="secp256r1", label="repl-ec",
                                         token=True)
        aes = s.generate_key(KeyType.AES, 256, label="repl-aes", token=True)
        attrs = s.get_attributes(priv, [Attribute.LABEL, Attribute.ID, Attribute.SENSITIVE,
                                        Attribute.SIGN, Attribute.KEY_TYPE])
        assert attrs[Attribute.SENSITIVE] and attrs[Attribute.SIGN]
        digest = hashlib.sha256(b"ec").digest()
        ciphertexts = []
        for serial in serials:
            # each member signs with its own copy; one public key verifies them all
            with g.open_session(member=serial) as ms:
                assert ms.get_attributes(priv, [Attribute.LABEL, Attribute.ID]) == \
                    {Attribute.LABEL: attrs[Attribute.LABEL], Attribute.ID: attrs[Attribute.ID]}
                sig = ms.sign(priv, b"replicated", mechanism=SIGN)
                esig = ms.sign(epriv, digest, mechanism=Mechanism.ECDSA)
                ciphertexts.append(ms.encrypt(aes, b"0123456789abcdef",
                                              mechanism=Mechanism.AES_ECB))
            assert s.verify(pub, b"replicated", sig, mechanism=SIGN)
            assert s.verify(epub, digest, esig, mechanism=Mechanism.ECDSA)
            # and the object is really on the token (raw python-pkcs11, no HA layer)
            with engine.direct_session(serial, lab.pin()) as raw:
                found = list(raw.get_objects({Attribute.LABEL: "repl-rsa",
                                              Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
                assert len(found) == 1
        assert len(set(ciphertexts)) == 1  # same AES key value everywhere
        for h in (pub, priv, epub, epriv, aes):
            s.destroy_object(h)
        for serial in serials:
            with g.open_session(member=serial) as ms:
                assert ms.find_objects({Attribute.LABEL: "repl-rsa"}) == []
                assert ms.find_objects({Attribute.LABEL: "repl-aes"}) == []
        with pytest.raises(CKRError) as exc:
            s.sign(priv, b"x", mechanism=SIGN)
        assert exc.value.ckr == "CKR_OBJECT_HANDLE_INVALID"
        # data objects replicate too
        d = s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "repl-data",
                             Attribute.VALUE: b"hello", Attribute.TOKEN: False})
        for serial in serials:
            with g.open_session(member=serial) as ms:
                assert ms.get_attribute(d, Attribute.VALUE) == b"hello"
    assert all(m.alive for m in g.members)


def test_request_errors_never_mark_member_down(healthy_lab, engine_factory) -> None:
    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    with g.open_session() as s:
        with pytest.raises(CKRError) as exc:
            s.login("not-the-pin")
        assert exc.value.ckr == "CKR_PIN_INCORRECT"
        assert "not-the-pin" not in str(exc.value) and "not-the-pin" not in repr(g)
        s.login(lab.pin())
        aes = s.generate_key(KeyType.AES, 128, label="req-err")
        try:
            for _ in range(4):
                with pytest.raises(CKRError) as exc:
                    s.sign(aes, b"x", mechanism=Mechanism.SHA256_RSA_PKCS)
                # SoftHSM2 behind p11-kit 0.25 says CKR_GENERAL_ERROR here
                assert exc.value.ckr in ("CKR_MECHANISM_INVALID", "CKR_KEY_TYPE_INCONSISTENT",
                                         "CKR_KEY_FUNCTION_NOT_PERMITTED",
                                         "CKR_GENERAL_ERROR")
                with pytest.raises(CKRError) as exc:
                    s.sign(aes, b"x", mechanism=Mechanism.SHA256)
                assert exc.value.ckr == "CKR_MECHANISM_INVALID"
                with pytest.raises(CKRError) as exc:
                    s.encrypt(aes, b"not a block multiple", mechanism=Mechanism.AES_ECB)
                assert exc.value.ckr == "CKR_DATA_LEN_RANGE"
                with pytest.raises(CKRError) as exc:
                    s.sign(999_999, b"x")
                assert exc.value.ckr == "CKR_OBJECT_HANDLE_INVALID"
        finally:
            s.destroy_object(aes)
    st = g.status()
    assert [m.status for m in st.members] == ["CKR_OK"] * len(st.members)
    assert all(m.failures == 0 for m in g.members)


def test_frozen_member_is_bounded_by_timeout(healthy_lab, engine_factory) -> None:
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    engine = engine_factory(lab, timeout_ms=1000)
    g = engine.group()
    s = g.open_session()
    s.login(lab.pin())
    lab.hang(m1)
    worst = 0.0
    for _ in range(10):
        t = time.monotonic()
        s.generate_random(32)
        worst = max(worst, time.monotonic() - t)
    assert worst < 1.0 + 0.5
    st = {m.serial: m.alive for m in g.status().members}
    assert st == {m0: True, m1: False}
    t = time.monotonic()
    assert codes(engine)[m1] == "CKR_TOKEN_NOT_PRESENT"
    assert time.monotonic() - t < 1.5  # status does not hang on the frozen member
    lab.restore(m1)
    assert wait_for(lambda: (s.generate_random(8), g.members[1].alive)[1])
    assert codes(engine)[m1] == "CKR_OK"
    s.close()


def test_frozen_member_during_login_is_bounded_by_timeout(healthy_lab, engine_factory) -> None:
    """Calls run on the caller's thread: a member frozen when the application
    logs in holds the login at most the timeout (the watchdog cuts it); the
    login succeeds on the member that serves."""
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    engine = engine_factory(lab, timeout_ms=1000)
    g = engine.group()
    s = g.open_session()
    lab.hang(m1)
    t = time.monotonic()
    s.login(lab.pin())
    assert time.monotonic() - t < 1.0 + 0.5
    assert g.logged_in and {m.serial: m.alive for m in g.members} == {m0: True, m1: False}
    s.close()


def test_frozen_member_during_recovery_is_bounded_by_timeout(healthy_lab, tmp_path) -> None:
    """The application call that runs a recovery attempt (activeBasic) on a
    member that is back but frozen (its server accepts, never answers) is held
    at most the timeout: the stuck C_Initialize is cut by the watchdog."""
    lab = healthy_lab
    _m0, m1 = (m.serial for m in lab.members())
    now = [1000.0]
    with Engine(lab_config(lab, tmp_path / "log", timeout_ms=1000),
                clock=lambda: now[0]) as engine:
        g = engine.group()
        s = g.open_session()
        s.login(lab.pin())
        lab.fail(m1)
        g.status()
        assert not g.members[1].alive
        lab.restore(m1)
        lab.hang(m1)
        now[0] += 5.0  # the next call is due to attempt m1
        t = time.monotonic()
        s.generate_random(8)
        assert time.monotonic() - t < 1.0 + 0.5
        assert g.members_set.policy.state_of(m1).attempts == 1  # the attempt ran, and failed
        lab.restore(m1)
        now[0] += 5.0
        assert wait_for(lambda: (s.generate_random(8), g.members[1].alive)[1])
        s.close()


def test_no_recovery_when_count_is_zero(healthy_lab, engine_factory) -> None:
    lab = healthy_lab
    m0 = lab.members()[0].serial
    engine = engine_factory(lab, reconn=0)
    g = engine.group()
    s = g.open_session()
    lab.fail(m0)
    s.generate_random(8)
    lab.restore(m0)
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        s.generate_random(8)
        time.sleep(0.05)
    assert codes(engine)[m0] == "CKR_DEVICE_ERROR"  # first report after the failure
    assert codes(engine)[m0] == "CKR_TOKEN_NOT_PRESENT"
    assert g.policy.attempts == 0
    assert g.recover_now(m0)  # manual recovery still works
    assert codes(engine)[m0] == "CKR_OK"


def test_failover_under_load(healthy_lab3, engine_factory) -> None:
    """8 threads signing while one member is crashed and another frozen.

    With 4 lanes per member (``MemberConcurrency``, the default) the 8 threads
    queue for the last member's lanes: a failover retry waiting there gets one
    in turn (lanes are handed to waiters first come first served; callers
    barging in on the fast path once starved it past its budget, and the
    healthy member was marked down).  The frozen member has several calls in
    flight on one connection when it is cut, each of which must come back."""
    lab = healthy_lab3
    m0, m1, m2 = (m.serial for m in lab.members())
    engine = engine_factory(lab, timeout_ms=1500, mode="activeEnhanced")
    g = engine.group()
    s = g.open_session()
    s.login(lab.pin())
    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="load", token=True)
    messages = [f"msg-{i}".encode() for i in range(8)]
    sigs: list[set[bytes]] = [set() for _ in messages]
    errors: list[BaseException] = []
    counts = [0] * len(messages)
    stop = threading.Event()

    def worker(i: int) -> None:
        with g.open_session() as ws:
            while not stop.is_set():
                try:
                    sigs[i].add(ws.sign(priv, messages[i], mechanism=SIGN))
                    counts[i] += 1
                except BaseException as e:  # any error fails the test
                    errors.append(e)
                    return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # Load is on every thread before the crash, and the crash has been met
    # before the freeze; then the load goes on until 10 s in all.
    assert wait_for(lambda: min(counts) >= 20 or errors, 10)
    lab.fail(m0)
    assert wait_for(lambda: not g.members[0].alive or errors, 10)
    done = sum(counts)
    assert wait_for(lambda: sum(counts) >= done + 50 or errors, 10)
    lab.hang(m1)
    stop.wait(max(0.0, 10.0 - (time.monotonic() - t0)))
    stop.set()
    for t in threads:
        t.join(10)
    elapsed = time.monotonic() - t0
    try:
        assert not errors, errors[:3]
        assert all(c > 0 for c in counts)
        # PKCS#1 v1.5 is deterministic: one signature per message, and it verifies
        for i, found in enumerate(sigs):
            assert len(found) == 1, f"thread {i} got different signatures"
            assert s.verify(pub, messages[i], next(iter(found)), mechanism=SIGN)
        assert {m.serial: m.alive for m in g.members} == {m0: False, m1: False, m2: True}
        print(f"\nfailover under load: {sum(counts)} signatures in {elapsed:.1f} s, "
              f"per member {g.op_counts()}")
    finally:
        lab.restore(m0)
        lab.restore(m1)
    # activeEnhanced: both come back without application calls
    assert wait_for(lambda: all(m.alive for m in g.members), timeout=20)
    s.destroy_object(priv)
    s.destroy_object(pub)
    s.close()


def test_thread_safety_many_concurrent_ops(healthy_lab, engine_factory) -> None:
    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    s = g.open_session()
    s.login(lab.pin())
    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="threads")
    aes = s.generate_key(KeyType.AES, 256, label="threads-aes")
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        with g.open_session() as ws:
            for i in range(250):
                data = os.urandom(16) + bytes([seed, i % 256])
                try:
                    k = i % 4
                    if k == 0:
                        ok = ws.digest(data) == hashlib.sha256(data).digest()
                    elif k == 1:
                        ok = len(ws.generate_random(32)) == 32
                    elif k == 2:
                        block = data[:16]
                        ok = ws.decrypt(aes, ws.encrypt(aes, block, mechanism=Mechanism.AES_ECB),
                                        mechanism=Mechanism.AES_ECB) == block
                    else:
                        ok = ws.verify(pub, data, ws.sign(priv, data, mechanism=SIGN),
                                       mechanism=SIGN)
                    if not ok:
                        errors.append(f"wrong result {k}")
                except BaseException as e:
                    errors.append(repr(e))
                with lock:
                    done[0] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:5]
    assert done[0] == 16 * 250
    counts = g.op_counts()
    assert all(c > 0 for c in counts.values())  # both members served
    print(f"\nthread safety: {done[0]} mixed ops in {elapsed:.1f} s, per member {counts}")
    s.close()


def test_slots_status_and_provisioning(healthy_lab, engine_factory, tmp_path) -> None:
    lab = healthy_lab
    serials = [m.serial for m in lab.members()]
    engine = engine_factory(lab)
    slots = engine.slots()
    assert [sl.kind for sl in slots] == ["member"] * len(serials) + ["ha"]
    assert slots[-1].description == "HA Virtual Card Slot"
    assert slots[-1].token_serial == lab.group_serial
    info = engine.token_info(slots[-1].slot_id)
    assert info.label == lab.group_label and info.serial == lab.group_serial
    with engine.open_session(slots[0].slot_id) as direct:
        assert direct.info().member == serials[0]
    cfg = lab_config(lab, tmp_path, ha_only=True)
    again = provision_transport_key(cfg, lab.group_label, lab.so_pin())
    assert set(again.values()) == {"present"}  # idempotent
    with Engine(cfg) as e2:
        assert [sl.kind for sl in e2.slots()] == ["ha"]
        st = e2.status()
        assert st[0].as_dict()["members"] == [{"serial": s, "status": "CKR_OK"}
                                              for s in serials]
