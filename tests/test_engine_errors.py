"""Which errors take a member down, on the lab's members (issue: a request error
never takes a member down; a member goes down only when its transport fails, or
when the same call succeeds on another member after it failed there)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from enginehelpers import make_engines
from pkcs11 import KeyType, Mechanism

from hacli.engine import CKRError, Engine
from hacli.engine.halog import LOG_NAME

pytestmark = pytest.mark.lab


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def test_general_error_from_a_wrong_request_keeps_every_member(healthy_lab, engine_factory,
                                                               tmp_path) -> None:
    """SoftHSM2 behind p11-kit 0.25 answers CKR_GENERAL_ERROR to signing with an
    AES key under CKM_SHA256_RSA_PKCS.  Every member says so: the request's
    fault, returned to the caller, no member marked down, nothing logged."""
    engine = engine_factory(healthy_lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(healthy_lab.pin())
        aes = s.generate_key(KeyType.AES, 256, label="err-aes")
        for _ in range(6):  # every member gets its turn at being asked first
            with pytest.raises(CKRError) as exc:
                s.sign(aes, b"data", mechanism=Mechanism.SHA256_RSA_PKCS)
            assert exc.value.ckr in ("CKR_GENERAL_ERROR", "CKR_KEY_TYPE_INCONSISTENT",
                                     "CKR_MECHANISM_INVALID")
        assert all(m.alive and m.failures == 0 for m in g.members)
        assert s.generate_random(16)
        s.destroy_object(aes)
    log = tmp_path / "halog" / LOG_NAME
    assert not log.exists() or " failed " not in log.read_text()


def test_general_error_that_another_member_serves_marks_the_first_down(
        healthy_lab, engine_factory) -> None:
    """The other direction.  A real token cannot be made sick on demand, so one
    member's calls are made to answer CKR_GENERAL_ERROR for signing while the
    other member serves the same call: the first member was sick, it is marked
    down, and the caller gets the signature."""
    engine = engine_factory(healthy_lab)
    g = engine.group()
    sick, healthy = g.members
    real_run = sick.run

    def sick_run(fn: Callable[..., Any], *args: Any, operation: str = "",
                 **kw: Any) -> Any:
        if operation == "C_Sign":
            raise pkcs11.GeneralError()
        return real_run(fn, *args, operation=operation, **kw)

    with g.open_session() as s:
        s.login(healthy_lab.pin())
        pub, priv = s.generate_keypair(KeyType.EC, curve="secp256r1", label="err-ec")
        sick.run = sick_run  # type: ignore[method-assign]
        try:
            # round robin: of two calls in a row, one is asked of the sick member first
            sigs = [s.sign(priv, bytes(32), mechanism=Mechanism.ECDSA) for _ in range(2)]
        finally:
            sick.run = real_run  # type: ignore[method-assign]
        assert not sick.alive and sick.last_error == "CKR_GENERAL_ERROR"
        assert healthy.alive and healthy.failures == 0
        for sig in sigs:
            assert s.verify(pub, bytes(32), sig, mechanism=Mechanism.ECDSA)
        s.destroy_object(pub)
        s.destroy_object(priv)


def test_ecdh_derive_through_the_ha_slot(healthy_lab, engine_factory) -> None:
    """ECDH1_DERIVE travels through the lab's p11-kit: both parties derive the
    same AES key, on whichever member serves."""
    engine = engine_factory(healthy_lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(healthy_lab.pin())
        assert Mechanism.ECDH1_DERIVE in s.mechanisms()
        a_pub, a_priv = s.generate_keypair(KeyType.EC, curve="secp256r1", label="ecdh-a")
        b_pub, b_priv = s.generate_keypair(KeyType.EC, curve="secp256r1", label="ecdh-b")
        from hacli.cli.menu.actions.keys import _ec_point

        def point(h: int) -> bytes:
            return _ec_point(s, h)

        k1 = s.derive_key(a_priv, KeyType.AES, 256, mechanism=Mechanism.ECDH1_DERIVE,
                          mechanism_param=(pkcs11.KDF.NULL, None, point(b_pub)),
                          template={pkcs11.Attribute.SENSITIVE: False,
                                    pkcs11.Attribute.EXTRACTABLE: True})
        k2 = s.derive_key(b_priv, KeyType.AES, 256, mechanism=Mechanism.ECDH1_DERIVE,
                          mechanism_param=(pkcs11.KDF.NULL, None, point(a_pub)),
                          template={pkcs11.Attribute.SENSITIVE: False,
                                    pkcs11.Attribute.EXTRACTABLE: True})
        block = bytes(16)
        assert (s.encrypt(k1, block, mechanism=Mechanism.AES_ECB)
                == s.encrypt(k2, block, mechanism=Mechanism.AES_ECB))
        for h in (k1, k2, a_pub, a_priv, b_pub, b_priv):
            s.destroy_object(h)


def test_member_failing_before_its_new_key_is_copied(healthy_lab, engine_factory) -> None:
    """The member that generated a key is killed (SIGKILL, for real) just as the
    key is being copied to the other member: the generation is made again on a
    member that serves, the application gets a key that works, and the orphan
    on the killed member is destroyed when it returns (then it gets the key)."""
    lab = healthy_lab
    engine = engine_factory(lab, synchronize=True)
    g = engine.group()
    killed: list[str] = []
    originals = {m.serial: m.run for m in g.members}

    def killing_run(m: Any) -> Callable[..., Any]:
        def run(fn: Callable[..., Any], *args: Any, operation: str = "", **kw: Any) -> Any:
            if operation == "C_WrapKey" and not killed:
                killed.append(m.serial)
                lab.fail(m.serial)
            return originals[m.serial](fn, *args, operation=operation, **kw)
        return run

    with g.open_session() as s:
        s.login(lab.pin())
        for m in g.members:
            m.run = killing_run(m)  # type: ignore[method-assign]
        try:
            key = s.generate_key(KeyType.AES, 256, label="orphan-test", token=True)
        finally:
            for m in g.members:
                m.run = originals[m.serial]  # type: ignore[method-assign]
        assert killed, "the copy under the transport key was never attempted"
        dead = g.members_set.get(killed[0])
        other = next(m for m in g.members if m is not dead)
        assert not dead.alive and other.alive
        reference = s.encrypt(key, bytes(16), mechanism=Mechanism.AES_ECB)  # works: on other
        lab.restore(dead.serial)
        from enginehelpers import wait_for
        assert wait_for(lambda: (s.generate_random(8), dead.alive)[1])
        assert wait_for(lambda: not dead.needs_sync)
        with g.open_session(member=dead.serial) as ms:
            found = ms.find_objects({pkcs11.Attribute.LABEL: "orphan-test"})
            assert len(found) == 1  # the orphan is gone, the group's key arrived
            assert ms.encrypt(found[0], bytes(16), mechanism=Mechanism.AES_ECB) == reference
        s.destroy_object(key)
