"""The durable change journal on the lab: a destroyed key never comes back.

Issue 8, fault 5: objects destroyed while a member was down reappeared on every
member after `hagroup synchronize`, because the journal of missed destroys
lived in memory and died with the engine.  Here the engine that destroys is
closed, or killed with SIGKILL, while the member is still down; a later,
separate `hacli hagroup synchronize` replays the destroy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pkcs11
import pytest
from clihelpers import run_process
from enginehelpers import lab_config, wait_for
from pkcs11 import Attribute, KeyType, Mechanism

from hacli.engine import Engine

pytestmark = pytest.mark.lab

TESTS = Path(__file__).resolve().parent


def on_each_member(lab, tmp_path: Path, fn) -> dict[str, object]:
    """``fn(session)`` on a logged-in session pinned to each member, by serial."""
    with Engine(lab_config(lab, tmp_path / "each")) as engine:
        g = engine.group()
        out = {}
        for m in g.members:
            with g.open_session(member=m.serial) as ms:
                if not g.logged_in:
                    ms.login(lab.pin())
                out[m.serial] = fn(ms)
        return out


def labels_everywhere(lab, tmp_path: Path, label: str) -> dict[str, int]:
    """How many token objects called ``label`` each member holds (pinned sessions)."""
    return on_each_member(lab, tmp_path, lambda ms: len(ms.find_objects(
        {Attribute.LABEL: label, Attribute.TOKEN: True})))


def synchronize_cli(lab) -> str:
    res = run_process("--conf", str(lab.conf_path), "hagroup", "synchronize",
                      "--pin-file", str(lab.pin_file))
    assert res.code == 0, res.out + res.err
    assert "NOT in sync" not in res.out
    return res.out


def test_destroy_missed_by_a_member_survives_the_engine_closing(healthy_lab, tmp_path) -> None:
    lab = healthy_lab
    m0, m1 = lab.members()
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            key = s.generate_key(KeyType.AES, 256, label="revoked-1", token=True)
            lab.fail(m1.serial)
            g.status()
            s.destroy_object(key)  # m1 is down: it still holds the key
    lab.restore(m1.serial)  # the engine is gone; the member comes back with the key
    out = synchronize_cli(lab)
    assert f"Destroyed on {m1.serial}" in out and "revoked-1" in out
    assert labels_everywhere(lab, tmp_path, "revoked-1") == {m0.serial: 0, m1.serial: 0}
    again = synchronize_cli(lab)  # delivered: nothing left to replay
    assert "0 object(s) copied, 0 destroyed; in sync" in again


def test_destroy_missed_by_a_member_survives_a_killed_engine(healthy_lab, tmp_path) -> None:
    """The process that destroyed the key is killed (SIGKILL) right after the
    destroy returned: what it told the application is on disk."""
    lab = healthy_lab
    m0, m1 = lab.members()
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from enginehelpers import lab_config, wait_for
        from hacli.engine import Engine
        from hacli.lab import Lab
        from pkcs11 import KeyType
        from pathlib import Path
        lab = Lab({str(lab.directory)!r})
        engine = Engine(lab_config(lab, Path({str(tmp_path / 'b')!r})))
        g = engine.group()
        s = g.open_session()
        s.login(lab.pin())
        key = s.generate_key(KeyType.AES, 256, label="revoked-2", token=True)
        lab.fail({m1.serial!r})
        g.status()
        s.destroy_object(key)
        print("destroyed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ}, check=False)
    assert proc.returncode == -9 and "destroyed" in proc.stdout, proc.stderr
    lab.restore(m1.serial)
    out = synchronize_cli(lab)
    assert f"Destroyed on {m1.serial}" in out
    assert labels_everywhere(lab, tmp_path, "revoked-2") == {m0.serial: 0, m1.serial: 0}


def test_a_copy_made_before_its_source_failed_goes_with_the_remade_key_pair(
        healthy_lab, tmp_path, monkeypatch) -> None:
    """Soak finding: a key pair's public key reached the other member, then the
    member that generated the pair was killed before the private key was
    copied.  The engine made the pair again on the member that serves, with
    the same label and ID, but left the first public key's copy there: after
    the application destroyed the pair, that copy was still on the member
    (a destroyed object back).  The copy must go before the pair is remade."""
    from hacli.engine.replicas import Replicas

    lab = healthy_lab
    real_replicate_one = Replicas.replicate_one
    copies: list[str] = []

    def replicate_then_kill_the_source(self, vobj, dst, src=None):
        copied = real_replicate_one(self, vobj, dst, src)
        copies.append(dst.serial)
        if len(copies) == 1 and src is not None:
            lab.fail(src.serial)  # the public key is across; the private key is not
        return copied

    monkeypatch.setattr(Replicas, "replicate_one", replicate_then_kill_the_source)
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            pub, priv = s.generate_keypair(KeyType.EC, label="remade-1", id=b"\x5e\x01",
                                           token=True)
            assert copies, "the pair was not copied"
            s.destroy_object(pub)
            s.destroy_object(priv)
    monkeypatch.setattr(Replicas, "replicate_one", real_replicate_one)
    killed = [m.serial for m in lab.members() if m.serial != copies[0]]
    for serial in killed:
        lab.restore(serial)
    synchronize_cli(lab)
    assert set(labels_everywhere(lab, tmp_path, "remade-1").values()) == {0}


def test_a_key_whose_every_holder_failed_during_its_copying_is_made_again(
        healthy_lab3, tmp_path, monkeypatch) -> None:
    """Soak finding (seed 505): a key made on member A reached member B; A froze
    while it was being copied to C, and B was killed meanwhile.  The engine
    returned the key because B held a copy, but B had failed too: C never got
    the key and the application's next call failed with C serving.  The copy
    to C must fall back to B as a source, and a key that no serving member
    holds must be made again on one that serves."""
    from hacli.engine.replicas import Replicas

    lab = healthy_lab3
    real_replicate_one = Replicas.replicate_one
    copied_to: list[str] = []

    def second_copy_after_both_holders_died(self, vobj, dst, src=None):
        if len(copied_to) == 1 and src is not None:
            lab.fail(copied_to[0])  # the member with the first copy
            lab.fail(src.serial)  # the member that made the key
        copied_to.append(dst.serial)
        return real_replicate_one(self, vobj, dst, src)

    monkeypatch.setattr(Replicas, "replicate_one", second_copy_after_both_holders_died)
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            key = s.generate_key(KeyType.AES, 128, label="holders-died-1")
            monkeypatch.setattr(Replicas, "replicate_one", real_replicate_one)
            assert len(copied_to) == 2, copied_to
            survivor = copied_to[1]
            # served by the one member left, which holds the key
            assert len(s.encrypt(key, b"\0" * 16, mechanism=Mechanism.AES_ECB)) == 16
            assert [m.serial for m in g.members if m.alive] == [survivor]


def test_a_sync_starting_during_a_destroy_does_not_copy_the_object_back(
        healthy_lab, tmp_path, monkeypatch) -> None:
    """Soak finding: a key created while member m1 was down waits in the journal
    for m1.  m1 returns; the application destroys the key, with every member
    in service (m1 has nothing to destroy yet).  A synchronisation that
    started after the destroy began, but before it ended, found the creation
    still waiting, read the key from m0 before the destroy reached m0, and
    wrote it to m1 after the destroy had passed m1: the key was back.  The
    interleaving is forced here: the sync's write to m1 waits until the
    destroy has been on every member."""
    import threading

    from hacli.engine.execution import Executor
    from hacli.engine.member import Member

    lab = healthy_lab
    m0, m1 = lab.members()
    with Engine(lab_config(lab, tmp_path / "a")) as engine:  # HASynchronize off
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            lab.fail(m1.serial)
            g.status()
            key = s.generate_key(KeyType.AES, 256, label="raced-1", token=True)
            lab.restore(m1.serial)
            assert g.recover_now()

            real_on_each, real_run = Executor.on_each, Member.run
            writing, destroyed = threading.Event(), threading.Event()
            reports: list = []
            syncing: list[threading.Thread] = []

            def write_after_the_destroy(self, fn, *args, operation="", **kw):
                if threading.current_thread() in syncing and operation == "C_UnwrapKey":
                    writing.set()
                    destroyed.wait(10)
                return real_run(self, fn, *args, operation=operation, **kw)

            def sync_during_destroy(self, operation, fn, vobj=None, only=None):
                if operation != "C_DestroyObject":
                    return real_on_each(self, operation, fn, vobj, only)
                sync = threading.Thread(target=lambda: reports.append(g.synchronize()))
                syncing.append(sync)
                sync.start()
                # the sync has read the key from m0 and is about to write it to
                # m1, or it has ended without copying anything
                assert wait_for(lambda: writing.is_set() or not sync.is_alive(), 10)
                try:
                    return real_on_each(self, operation, fn, vobj, only)
                finally:
                    destroyed.set()
                    sync.join(10)

            monkeypatch.setattr(Member, "run", write_after_the_destroy)
            monkeypatch.setattr(Executor, "on_each", sync_during_destroy)
            s.destroy_object(key)
            monkeypatch.undo()
            assert reports and not reports[0].copied, reports
    assert labels_everywhere(lab, tmp_path, "raced-1") == {m0.serial: 0, m1.serial: 0}


def ciphertexts_everywhere(lab, tmp_path: Path, label: str) -> dict[str, list[bytes]]:
    """Per member, the AES-ECB encryption of one zero block under each key called ``label``."""
    from pkcs11 import Mechanism

    return on_each_member(lab, tmp_path, lambda ms: [
        ms.encrypt(h, bytes(16), mechanism=Mechanism.AES_ECB)
        for h in ms.find_objects({Attribute.LABEL: label, Attribute.TOKEN: True})])


def test_a_key_made_by_a_member_that_died_before_answering_is_replaced(  # answer lost
        healthy_lab, tmp_path, monkeypatch) -> None:
    """Soak reasoning: a member finishes C_GenerateKey and dies before its answer
    arrives; the engine makes the key again on another member, with the same
    label and ID.  The dead member's key is a different key under the group's
    identity: when it returns, it must get the group's key instead (a destroy
    journaled before the creation), never keep its own."""
    import pkcs11

    from hacli.engine import replicas

    lab = healthy_lab
    real_creating = replicas._creating
    victims: list[str] = []

    def answer_lost_on_first_member(m, fn, conn, *objs, cut=None):
        if victims:
            return real_creating(m, fn, conn, *objs, cut=cut)
        victims.append(m.serial)

        def made_then_died(m_, c_, *o):
            fn(m_, c_, *o)  # the key exists on the member now
            lab.fail(m_.serial)
            raise pkcs11.exceptions.DeviceError()

        return real_creating(m, made_then_died, conn, *objs, cut=cut)

    monkeypatch.setattr(replicas, "_creating", answer_lost_on_first_member)
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            s.generate_key(KeyType.AES, 256, label="answer-lost-1", token=True)
    monkeypatch.undo()
    lab.restore(victims[0])
    synchronize_cli(lab)
    enc = ciphertexts_everywhere(lab, tmp_path, "answer-lost-1")
    assert all(len(c) == 1 for c in enc.values()), enc  # one key each
    assert len({c[0] for c in enc.values()}) == 1, enc  # the same key everywhere


def aes_key_on_member_only(lab, token_label: str, extra: list[str]) -> None:
    """An AES token key made on one member's token directly (pkcs11-tool through
    SoftHSM2, not through hacli): no CKA_ID, and no label unless ``extra`` has one."""
    import shutil

    from hacli.lab import find_tools

    env = {**os.environ, **lab.member(token_label).softhsm2_env, "HACLI_TEST_TOOL_PIN": lab.pin()}
    proc = subprocess.run(
        [shutil.which("pkcs11-tool") or "pkcs11-tool", "--module", find_tools().softhsm2,
         "--token-label", token_label, "--login", "--pin", "env:HACLI_TEST_TOOL_PIN",
         "--keygen", "--key-type", "AES:32", *extra],
        capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_half_made_key_left_by_a_cut_creation_is_removed_by_sync(
        healthy_lab, tmp_path) -> None:
    """Soak finding: SoftHSM2 writes a new key before its label and ID, so a
    member killed during C_GenerateKeyPair returns with a key that has
    neither, on that member only; synchronisation reported it as a conflict
    for ever.  A member whose failure cut a creation (``creation_cut``, set by
    the engine at the failure) gets such keys removed, and only such keys."""
    lab = healthy_lab
    m0, m1 = lab.members()
    for extra in ([], ["--label", "admin-made"]):  # the half-made key, and an admin's own
        aes_key_on_member_only(lab, m1.label, extra)
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            before = g.synchronize(dry_run=True)
            assert len(before.conflicts) == 2, before  # without the flag: conflicts
            g.members_set.get(m1.serial).creation_cut = True
            report = g.synchronize()
            assert [d[1].label for d in report.destroys] in ([None], [""]), report
            assert len(report.conflicts) == 1  # the labelled one is the admin's: kept
            assert not g.members_set.get(m1.serial).creation_cut
    assert labels_everywhere(lab, tmp_path, "admin-made") == {m0.serial: 0, m1.serial: 1}
    destroy_on_each_member(lab, tmp_path, "admin-made")  # the lab is shared by the tests


def test_half_made_keys_on_two_cut_members_are_both_removed(healthy_lab, tmp_path) -> None:
    """Soak finding (after multi-part sequences joined its mix): two members
    killed during two creations each came back with a half-made object, and
    the two look alike, so each was taken for the other's copy and neither
    was removed.  Members whose own failure cut a creation are no evidence."""
    lab = healthy_lab
    m0, m1 = lab.members()
    for m in (m0, m1):
        aes_key_on_member_only(lab, m.label, [])
    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()
        with g.open_session() as s:
            s.login(lab.pin())
            for m in (m0, m1):
                g.members_set.get(m.serial).creation_cut = True
            report = g.synchronize()
            assert sorted(d[0] for d in report.destroys) == sorted([m0.serial, m1.serial])
            assert not report.conflicts, report
            assert not any(m.creation_cut for m in g.members)
            assert not g.synchronize(dry_run=True).destroys


def test_a_half_made_object_is_kept_in_view_while_another_member_cannot_be_asked(
        healthy_lab, tmp_path, monkeypatch) -> None:
    """Soak finding (4 lanes per member): a sync that could not count the
    half-made object on another member (that member's search failed) kept the
    object, rightly, but cleared ``creation_cut``, so no later sync looked
    again and the member kept the object for good.  The flag stays until
    every other member could be asked."""
    from hacli.engine import sync

    lab = healthy_lab
    m0, m1 = lab.members()
    aes_key_on_member_only(lab, m1.label, [])
    real_count = sync.count_exactly
    failed_once: list[str] = []

    with Engine(lab_config(lab, tmp_path / "a")) as engine:
        g = engine.group()

        def count_failing_once_on_m0(conn, ident):
            if conn is g.members_set.get(m0.serial).conn and not failed_once:
                failed_once.append(m0.serial)
                raise pkcs11.exceptions.GeneralError()
            return real_count(conn, ident)

        monkeypatch.setattr(sync, "count_exactly", count_failing_once_on_m0)
        with g.open_session() as s:
            s.login(lab.pin())
            g.members_set.get(m1.serial).creation_cut = True
            first = g.synchronize()
            assert failed_once and not first.destroys, first
            assert g.members_set.get(m1.serial).creation_cut  # still to be looked at
            second = g.synchronize()
            assert [d[0] for d in second.destroys] == [m1.serial], second
            assert not g.members_set.get(m1.serial).creation_cut
            assert not second.conflicts, second


def destroy_on_each_member(lab, tmp_path: Path, label: str) -> None:
    """Destroy the token objects called ``label`` member by member (pinned sessions)."""
    on_each_member(lab, tmp_path, lambda ms: [
        ms.destroy_object(h)
        for h in ms.find_objects({Attribute.LABEL: label, Attribute.TOKEN: True})])
