"""Several calls at once into one member (``MemberConcurrency``), on lab members.

Members behind ``p11-kit server`` are reached through ``p11-kit-client.so``,
which is thread-safe: each member connection serves up to K calls at once,
each on its own work session (a *lane*).  Real tokens, real servers; a
member is frozen with SIGSTOP.  Waits poll for conditions, not fixed sleeps.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from enginehelpers import lab_config, make_engines, wait_for
from pkcs11 import KeyType, Mechanism

from hacli.engine import Engine, provision_transport_key
from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.member import Connection
from hacli.engine.module import lane_index

pytestmark = pytest.mark.lab

SIGN = Mechanism.SHA256_RSA_PKCS


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def _mixed_load(engine: Engine, pin: str, threads: int, rounds: int) -> tuple[list[str], int]:
    """``threads`` threads through the HA slot, each on its own session doing
    sign/verify, encrypt/decrypt and random, every answer checked; returns
    (errors, calls made)."""
    g = engine.group()
    s = g.open_session()
    s.login(pin)
    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="pool-rsa")
    aes = s.generate_key(KeyType.AES, 256, label="pool-aes")
    errors: list[str] = []
    calls = [0]
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(seed: int) -> None:
        with g.open_session() as ws:
            start.wait(30)
            for i in range(rounds):
                data = os.urandom(16) + bytes([seed, i % 256])
                try:
                    k = i % 3
                    if k == 0:
                        sig = ws.sign(priv, data, mechanism=SIGN)
                        ok = ws.verify(pub, data, sig, mechanism=SIGN) and \
                            not ws.verify(pub, data + b"!", sig, mechanism=SIGN)
                        n = 3
                    elif k == 1:
                        block = data[:16]
                        ct = ws.encrypt(aes, block, mechanism=Mechanism.AES_ECB)
                        back = ws.decrypt(aes, ct, mechanism=Mechanism.AES_ECB)
                        ok = ct != block and back == block
                        n = 2
                    else:
                        a, b = ws.generate_random(32), ws.generate_random(32)
                        ok = len(a) == len(b) == 32 and a != b
                        n = 2
                    if not ok:
                        errors.append(f"wrong answer ({k}) in thread {seed}")
                except BaseException as e:
                    errors.append(repr(e))
                    n = 0
                with lock:
                    calls[0] += n

    # daemon threads: one stuck for good fails the test below, not the run's exit
    ts = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    if any(t.is_alive() for t in ts):
        errors.append("a thread never came back")
    s.close()
    return errors, calls[0]


def _timed_call_into(member: Any, outcomes: list[tuple[float, Any]]) -> Callable[[], None]:
    """A call straight into ``member`` (no failover) that appends (seconds it
    took, "answered" or the exception) to ``outcomes`` (list.append is atomic)."""
    def call() -> None:
        t = time.monotonic()
        try:
            member.run(lambda conn: conn.work.generate_random(64), operation="C_GenerateRandom")
            result: Any = "answered"
        except Exception as e:
            result = e
        outcomes.append((time.monotonic() - t, result))

    return call


def test_sixteen_threads_run_at_once_within_each_member(healthy_lab, engine_factory) -> None:
    """16 threads through the HA slot on 2 members: every answer right, both
    members serve, and calls overlapped inside each member (more than one
    lane held at once), each lane on its own work session."""
    lab = healthy_lab
    engine = engine_factory(lab, concurrency=4)
    g = engine.group()
    errors, calls = _mixed_load(engine, lab.pin(), threads=16, rounds=30)
    assert not errors, errors[:5]
    assert calls == 16 * (10 * 3 + 10 * 2 + 10 * 2)
    assert all(c > 0 for c in g.op_counts().values())  # both members served
    for m in g.members:
        conn = m.conn
        assert conn is not None and m.alive
        inst = conn.instance
        assert inst.direct and inst.concurrency == 4
        assert inst.peak_in_flight > 1, f"{m.serial}: calls never overlapped"
        assert inst.in_flight == 0  # every lane given back
        works = [lane.work for lane in conn.lanes if lane is not None]
        assert len(works) > 1 and len({id(w) for w in works}) == len(works)


def test_one_lane_keeps_calls_one_at_a_time(healthy_lab, engine_factory) -> None:
    """``MemberConcurrency = 1``: today's behaviour, one call at a time into a
    member and one work session per connection, under the same 16 threads."""
    lab = healthy_lab
    engine = engine_factory(lab, concurrency=1)
    g = engine.group()
    errors, _calls = _mixed_load(engine, lab.pin(), threads=16, rounds=9)
    assert not errors, errors[:5]
    for m in g.members:
        conn = m.conn
        assert conn is not None
        assert conn.instance.concurrency == 1 and conn.instance.peak_in_flight == 1
        assert len(conn.lanes) == 1


def test_a_module_loaded_in_process_stays_serialised(healthy_lab, engine_factory) -> None:
    """SoftHSM2 loaded in the process is not thread-safe under python-pkcs11:
    its instance gets one lane whatever ``MemberConcurrency`` says."""
    lab = healthy_lab
    engine = engine_factory(lab, direct=True, concurrency=8)
    g = engine.group()
    errors, _calls = _mixed_load(engine, lab.pin(), threads=4, rounds=3)
    assert not errors, errors[:5]
    for m in g.members:
        assert m.conn is not None
        inst = m.conn.instance
        assert not inst.direct and inst.concurrency == 1 and len(m.conn.lanes) == 1


def test_a_member_frozen_with_several_calls_in_flight(healthy_lab, engine_factory) -> None:
    """A member frozen while several calls run in it: every one of them fails
    with CKR_DEVICE_ERROR within the timeout plus a small margin (the cut
    fails every call in flight on the instance), calls through the HA slot
    fail over, and the other member serves throughout."""
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    timeout = 1.0
    engine = engine_factory(lab, timeout_ms=int(timeout * 1000), interval=60, concurrency=4)
    g = engine.group()
    s = g.open_session()
    s.login(lab.pin())
    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="pool-frozen")
    frozen = g.members[1]
    assert frozen.conn is not None
    inst = frozen.conn.instance
    lab.hang(m1)

    outcomes: list[tuple[float, Any]] = []
    lock = threading.Lock()
    stuck_call = _timed_call_into(frozen, outcomes)

    ha_errors: list[str] = []
    ha_worst = [0.0]
    stop = threading.Event()

    def ha_caller() -> None:  # through the HA slot: must never see an error
        with g.open_session() as ws:
            while not stop.is_set():
                data = os.urandom(20)
                t = time.monotonic()
                try:
                    sig = ws.sign(priv, data, mechanism=SIGN)
                    if not ws.verify(pub, data, sig, mechanism=SIGN):
                        ha_errors.append("bad signature")
                except BaseException as e:
                    ha_errors.append(repr(e))
                with lock:
                    ha_worst[0] = max(ha_worst[0], time.monotonic() - t)

    # daemon threads: one stuck for good fails the test, not the run's exit
    stuck = [threading.Thread(target=stuck_call, daemon=True) for _ in range(3)]
    ha = [threading.Thread(target=ha_caller, daemon=True) for _ in range(4)]
    for t in stuck:
        t.start()
    # several calls really are in the frozen member at once
    assert wait_for(lambda: inst.in_flight >= 3 or inst.abandoned, timeout=5, step=0.005)
    assert not inst.abandoned and inst.in_flight >= 3
    for t in ha:
        t.start()
    for t in stuck:
        t.join(10)
    assert wait_for(lambda: not frozen.alive, timeout=5)
    calls_before = g.op_counts()[m0]
    assert wait_for(lambda: g.op_counts()[m0] > calls_before + 20, timeout=10)
    stop.set()
    for t in ha:
        t.join(10)
    lab.restore(m1)
    assert not any(t.is_alive() for t in stuck + ha), "a call never came back"

    assert inst.abandoned
    assert len(outcomes) == 3
    for took, result in outcomes:
        assert isinstance(result, Exception) and ckr_name(result) == CKR.DEVICE_ERROR, result
        assert took < timeout + 0.5, f"held {took:.2f} s"
    assert not ha_errors, ha_errors[:5]
    # a call that met the frozen member: its timeout, then the other member
    assert ha_worst[0] < timeout + 0.5
    assert g.members[0].alive
    s.close()


SYSTEM_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"


def _engine_through(lab: Any, tmp_path: Path, library: str | None = None,
                    address: dict[str, str] | None = None, **kw: Any) -> Engine:
    """An engine on the lab's group with members loaded from ``library`` and
    reached at ``address`` (serial -> socket path) where given."""
    cfg = lab_config(lab, tmp_path / "halog", **kw)
    members = {
        serial: dataclasses.replace(
            loc, library=library or loc.library,
            env={"P11_KIT_SERVER_ADDRESS": f"unix:path={address[serial]}"}
            if address and serial in address else loc.env)
        for serial, loc in cfg.members.items()}
    cfg = dataclasses.replace(cfg, members=members)
    provision_transport_key(cfg, lab.group_label, lab.so_pin(), lab.pin())
    return Engine(cfg)


def test_lanes_only_through_a_client_that_carries_the_read_fix(healthy_lab,
                                                              tmp_path: Path) -> None:
    """The lab's p11-kit client (hacli's read fix) gets MemberConcurrency lanes;
    Debian's stock client, whose calls can be left waiting for good when a
    shared connection breaks (tests/test_lab.py), gets one, whatever is asked."""
    lab = healthy_lab
    for library, lanes in ((None, 4), (SYSTEM_CLIENT, 1)):
        engine = _engine_through(lab, tmp_path, library, concurrency=4)
        try:
            g = engine.group()
            with g.open_session() as s:
                assert len(s.generate_random(16)) == 16
            for m in g.members:
                assert m.conn is not None
                inst = m.conn.instance
                assert inst.direct and inst.concurrency == lanes, (library, inst.concurrency)
        finally:
            engine.close()


def test_a_member_that_stops_mid_answer_with_calls_in_flight(healthy_lab,
                                                            tmp_path: Path) -> None:
    """member1 behind tests/stallproxy.py: with several calls in flight on its
    connection, its answer stops after the header (as a member frozen between
    writing a header and a body would).  The watchdog cuts the connection at the
    timeout, and every call in flight comes back with CKR_DEVICE_ERROR: none is
    left waiting in the client (it was, with upstream's client, at 4 lanes)."""
    lab = healthy_lab
    m0, m1 = lab.members()
    listen = tmp_path / "stall.sock"
    proxy = subprocess.Popen([sys.executable, str(Path(__file__).with_name("stallproxy.py")),
                              "proxy", str(listen), str(m1.socket)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
        timeout = 1.0
        engine = _engine_through(lab, tmp_path, address={m1.serial: str(listen)},
                                 timeout_ms=int(timeout * 1000), interval=60, concurrency=4)
        try:
            g = engine.group()
            with g.open_session() as s:
                s.login(lab.pin())
                stalled = g.members[1]
                assert stalled.conn is not None
                inst = stalled.conn.instance
                assert inst.concurrency == 4
                proxy.send_signal(signal.SIGUSR1)
                outcomes: list[tuple[float, Any]] = []
                call = _timed_call_into(stalled, outcomes)
                calls = [threading.Thread(target=call, daemon=True) for _ in range(3)]
                for t in calls:
                    t.start()
                assert proxy.stdout.readline().strip() == "stalled"
                for t in calls:
                    t.join(10)
                assert not any(t.is_alive() for t in calls), "a call never came back"
                assert inst.abandoned
                assert len(outcomes) == 3
                for took, result in outcomes:
                    assert isinstance(result, Exception), result
                    assert ckr_name(result) == CKR.DEVICE_ERROR, result
                    assert took < timeout + 0.5, f"held {took:.2f} s"
                # the HA slot goes on: member1 is found down, member0 serves
                for _ in range(4):
                    assert len(s.generate_random(16)) == 16
                assert not stalled.alive
                assert g.op_counts()[m0.serial] > 0
        finally:
            engine.close()
    finally:
        proxy.kill()
        proxy.wait()


def test_lanes_share_objects_and_handles(healthy_lab, engine_factory) -> None:
    """A key made on one lane is found by its handle on another lane (object
    handles are the application's), each lane caching its own python-pkcs11
    object bound to its own session."""
    lab = healthy_lab
    engine = engine_factory(lab, concurrency=2)
    g = engine.group()
    s = g.open_session()
    s.login(lab.pin())
    aes = s.generate_key(KeyType.AES, 256, label="pool-lanes")
    vobj = g.vobject(aes, "C_Encrypt")
    m = g.members[0]
    inside, release = threading.Event(), threading.Event()

    held: list[int] = []

    def hold(conn: Connection) -> int:  # keeps one lane busy
        held.append(lane_index())
        inside.set()
        release.wait(5)
        return 0

    holder = threading.Thread(target=m.run, args=(hold,), kwargs={"operation": "hold"})
    holder.start()
    try:
        assert inside.wait(5)

        def on_other_lane(conn: Connection) -> tuple[int, Any, Any]:
            key = g._objects.resolve(m, conn, vobj)
            return lane_index(), key, conn.work

        index, key, work = m.run(on_other_lane, operation="C_FindObjects")
    finally:
        release.set()
        holder.join(5)
    assert m.conn is not None
    assert sorted([*held, index]) == [0, 1]
    lane = m.conn.lanes[index]
    other = m.conn.lanes[held[0]]
    assert lane is not None and other is not None and work is lane.work
    assert work is not other.work
    assert key.handle == vobj.real[m.serial][1] and lane.objects[key.handle] is key
    assert key.session is work
    block = bytes(16)
    assert s.decrypt(aes, s.encrypt(aes, block, mechanism=Mechanism.AES_ECB),
                     mechanism=Mechanism.AES_ECB) == block
    s.close()

