"""Multi-part operations that survive their member's failure (issue 12, item 1).

On real lab members (SoftHSM2 behind p11-kit servers): the member serving an
operation is killed (SIGKILL) or frozen (SIGSTOP) in the middle of it; the
operation is replayed on the other member from its journal and the
application sees one successful result.  Past ``MultipartJournalBytes`` it is
``CKR_DEVICE_ERROR`` and an HA log line saying why.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginehelpers import FakeClock, make_engines
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine import CKRError, Engine
from hacli.engine.halog import LOG_NAME

pytestmark = pytest.mark.lab

SIGN = Mechanism.SHA256_RSA_PKCS
MiB = 1 << 20


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def ha_log(tmp_path: Path) -> list[list[str]]:
    """The HA log's lines, split into fields (engine_factory logs to tmp_path/halog)."""
    path = tmp_path / "halog" / LOG_NAME
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def events(tmp_path: Path, event: str) -> list[str]:
    """(member serial) of every ``event`` line, with its CKR field."""
    return [f"{f[2]} {f[4]}" for f in ha_log(tmp_path) if f[3] == event]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_crash_mid_1mib_sign_is_invisible(healthy_lab, engine_factory, tmp_path) -> None:
    """Issue 12's "done when": a 2-second-old member crash in the middle of a
    1 MiB multi-part sign is invisible to the application."""
    lab = healthy_lab
    clock = FakeClock()
    engine = engine_factory(lab, clock=clock)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="mpfail-rsa")
        data = os.urandom(MiB)  # exactly the default journal bound
        chunks = pieces(data, 4096)
        expected = s.sign(priv, data, mechanism=SIGN)  # PKCS#1 v1.5: deterministic
        s.sign_init(priv, mechanism=SIGN)
        s.digest_init()
        s.verify_init(pub, mechanism=SIGN)
        serving = s.active_operations()["sign"]
        for c in chunks[:128]:
            s.sign_update(c)
            s.digest_update(c)
            s.verify_update(c)
        lab.fail(serving)
        clock.advance(2.0)  # the crash is 2 s old: a recovery attempt is due, and fails
        for c in chunks[128:]:
            s.sign_update(c)
            s.digest_update(c)
            s.verify_update(c)
        assert serving not in s.active_operations().values()
        signature = s.sign_final()
        assert signature == expected
        assert s.verify_final(signature) is True
        assert s.digest_final() == hashlib.sha256(data).digest()
        assert s.verify(pub, data, signature, mechanism=SIGN)
        assert s.active_operations() == {}
    assert f"{serving} -" in events(tmp_path, "multipart-replayed")
    assert not events(tmp_path, "multipart-journal-full")


@pytest.mark.parametrize("mechanism", [Mechanism.AES_CBC, Mechanism.AES_CBC_PAD])
def test_aes_cbc_across_kills(healthy_lab, engine_factory, mechanism) -> None:
    """Encrypt, then decrypt, in parts with the serving member killed half-way:
    the same ciphertext and plaintext as one-shot calls, no byte twice."""
    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    iv = bytes(range(16))
    pad = mechanism == Mechanism.AES_CBC_PAD
    plain = os.urandom(16 * 200 + (7 if pad else 0))
    # uneven chunks: some outputs are empty, some carry a block held back before
    sizes = [10, 30, 100, 3, 500, 1, 700]
    with g.open_session() as s:
        s.login(lab.pin())
        # a token key: the member killed first comes back holding it
        aes = s.generate_key(KeyType.AES, 256, label="mpfail-aes", token=True)
        cipher = s.encrypt(aes, plain, mechanism=mechanism, mechanism_param=iv)

        def in_parts(kind: str, data: bytes) -> bytes:
            init, update, final = ((s.encrypt_init, s.encrypt_update, s.encrypt_final)
                                   if kind == "encrypt" else
                                   (s.decrypt_init, s.decrypt_update, s.decrypt_final))
            init(aes, mechanism=mechanism, mechanism_param=iv)
            serving = s.active_operations()[kind]
            out, at = [], 0
            for n in sizes:
                out.append(update(data[at:at + n]))
                at += n
            assert sum(map(len, out)) > 0  # output already returned before the kill
            lab.fail(serving)
            out += [update(c) for c in pieces(data[at:], 333)]
            assert s.active_operations()[kind] != serving
            out.append(final())
            lab.restore(serving)
            assert g.recover_now(serving)
            return b"".join(out)

        try:
            assert in_parts("encrypt", plain) == cipher
            assert in_parts("decrypt", cipher) == plain
        finally:
            s.destroy_object(aes)


def test_journal_bound(healthy_lab, engine_factory, tmp_path) -> None:
    """Past MultipartJournalBytes: CKR_DEVICE_ERROR as before, and the HA log
    says why; a session pinned to its member has nowhere to move (Luna)."""
    lab = healthy_lab
    engine = engine_factory(lab, journal_bytes=4096)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        s.digest_init()
        serving = s.active_operations()["digest"]
        s.digest_update(bytes(4096))  # at the bound: still replayable
        s.digest_update(b"x")  # past it: the journal is dropped
        with g.open_session(member=serving) as pinned:
            pinned.digest_init()
            pinned.digest_update(b"pinned")
            lab.fail(serving)
            with pytest.raises(CKRError) as exc:
                s.digest_update(b"y")
            assert exc.value.ckr == "CKR_DEVICE_ERROR" and exc.value.member == serving
            assert "MultipartJournalBytes (4096 bytes)" in str(exc.value)
            assert "digest" not in s.active_operations()
            with pytest.raises(CKRError) as exc:
                pinned.digest_final()
            assert exc.value.ckr == "CKR_DEVICE_ERROR"
        # the session serves a new operation on the member that is left
        s.digest_init()
        s.digest_update(b"abc")
        assert s.digest_final() == hashlib.sha256(b"abc").digest()
    assert events(tmp_path, "multipart-journal-full") == [f"{serving} CKR_DEVICE_ERROR"]
    assert not events(tmp_path, "multipart-replayed")


def test_frozen_member_mid_sign(healthy_lab, engine_factory, tmp_path) -> None:
    """A frozen member costs the step one timeout; the operation then goes on
    on the other member."""
    lab = healthy_lab
    engine = engine_factory(lab, timeout_ms=800)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        _pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="mpfail-frozen")
        data = os.urandom(64 * 1024)
        s.sign_init(priv, mechanism=SIGN)
        serving = s.active_operations()["sign"]
        chunks = pieces(data, 4096)
        for c in chunks[:8]:
            s.sign_update(c)
        lab.hang(serving)
        try:
            for c in chunks[8:]:
                s.sign_update(c)
            signature = s.sign_final()
        finally:
            lab.restore(serving)
        assert signature == s.sign(priv, data, mechanism=SIGN)
    assert f"{serving} -" in events(tmp_path, "multipart-replayed")


def test_find_resumes_after_member_failure(healthy_lab, engine_factory) -> None:
    """A search interrupted by the failure of the member that ran it goes on
    without repeating or losing objects, and every handle it gives works."""
    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        made = {s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: False,
                                 Attribute.APPLICATION: "mpfail-find",
                                 Attribute.LABEL: f"mpfail-find-{i}",
                                 Attribute.VALUE: b"v"}): f"mpfail-find-{i}"
                for i in range(12)}
        before = g.op_counts()
        s.find_objects_init({Attribute.CLASS: ObjectClass.DATA,
                             Attribute.APPLICATION: "mpfail-find"})
        searched = next(k for k, v in g.op_counts().items() if v > before[k])
        found = s.find_objects_next(5)
        lab.fail(searched)
        while batch := s.find_objects_next(4):
            found += batch
        s.find_objects_final()
        assert sorted(found) == sorted(made)  # nothing twice, nothing lost
        assert {h: s.get_attribute(h, Attribute.LABEL) for h in found} == made
        assert not next(m for m in g.members if m.serial == searched).alive


def test_replay_with_other_output_is_refused(healthy_lab, engine_factory, tmp_path) -> None:
    """A member taking over that produces other bytes than the caller already
    has (here: the record of them altered, as members holding different keys
    would show it) ends the operation: CKR_DEVICE_ERROR, never a mixed stream."""
    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        aes = s.generate_key(KeyType.AES, 128, label="mpfail-mismatch", token=True)
        try:
            s.encrypt_init(aes, mechanism=Mechanism.AES_ECB)
            serving = s.active_operations()["encrypt"]
            assert len(s.encrypt_update(bytes(32))) == 32
            op = s._ops.get("encrypt")
            assert op is not None and op.journal is not None and op.journal.outputs
            op.journal.outputs[0] = bytes(32)  # not what AES gives for zeros
            lab.fail(serving)
            with pytest.raises(CKRError) as exc:
                s.encrypt_update(bytes(16))
            assert exc.value.ckr == "CKR_DEVICE_ERROR"
            assert "other output" in str(exc.value)
            assert "encrypt" not in s.active_operations()
        finally:
            lab.restore(serving)
            assert g.recover_now(serving)
            s.destroy_object(aes)
    assert events(tmp_path, "multipart-replay-mismatch") == [f"{serving} CKR_DEVICE_ERROR"]


def test_a_step_whose_operation_was_aborted_meanwhile_moves_on(healthy_lab, engine_factory,
                                                               monkeypatch) -> None:
    """Soak finding: a step checked that its member served, then another call
    marked that member down and the abort queued for its operation ran first;
    the step met an ended operation and the application got a RuntimeError
    ("multi-part operation already ended").  The step now takes it as the
    member's failure: the operation moves to the other member."""
    import pkcs11

    lab = healthy_lab
    engine = engine_factory(lab)
    g = engine.group()
    iv = bytes(range(16))
    plain = os.urandom(16 * 64)
    with g.open_session() as s:
        s.login(lab.pin())
        aes = s.generate_key(KeyType.AES, 256, label="mpfail-race")
        cipher = s.encrypt(aes, plain, mechanism=Mechanism.AES_CBC, mechanism_param=iv)
        s.decrypt_init(aes, mechanism=Mechanism.AES_CBC, mechanism_param=iv)
        out = [s.decrypt_update(cipher[:256])]
        serving = g.members_set.get(s.active_operations()["decrypt"])
        assert serving.conn is not None
        instance = serving.conn.instance
        driver = s._ops._ops["decrypt"].driver  # the operation's helper on that member
        op_driver_done = []
        real_call = instance.call

        def call_after_the_member_was_marked_down(fn, *args, **kw):  # type: ignore[no-untyped-def]
            # between the step's check and its call: another call marks the
            # member down, and its abort of the operation runs first
            monkeypatch.setattr(instance, "call", real_call)
            g.members_set.mark_failed(serving, pkcs11.DeviceError())
            op_driver_done.append(driver.join(5))
            return real_call(fn, *args, **kw)

        monkeypatch.setattr(instance, "call", call_after_the_member_was_marked_down)
        out.append(s.decrypt_update(cipher[256:]))
        out.append(s.decrypt_final())
        assert op_driver_done == [True] and b"".join(out) == plain
        assert s.active_operations() == {}
