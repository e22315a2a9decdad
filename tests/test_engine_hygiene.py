"""Engine hygiene on the lab (issue 8): no crash and no python-pkcs11 noise under
freeze-and-kill chaos, no thread outliving Engine.close(), no work directory
outliving its process.

The chaos run is a subprocess (tests/hygiene_chaos.py), so that a segfault, the
interpreter's own clean-up and its stderr are observed as an application's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginehelpers import lab_config, make_engines, wait_for
from pkcs11 import KeyType, Mechanism

from hacli.engine import Engine
from hacli.engine.exceptions import CallTimeout
from hacli.engine.module import OWNER_FILE, InstanceRegistry, process_start_time
from hacli.lab import find_tools

pytestmark = pytest.mark.lab

TESTS = Path(__file__).resolve().parent
SIGN = Mechanism.SHA256_RSA_PKCS
#: What must never reach an application's stderr.
NOISE = ("Exception ignored", "Traceback", "Segmentation fault", "Fatal Python error")


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def child_env(tmpdir: Path) -> dict[str, str]:
    """The environment of a child process whose temporary files go to ``tmpdir``."""
    return {**os.environ, "TMPDIR": str(tmpdir),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def hacli_threads(exclude: set[threading.Thread] = frozenset()) -> list[str]:
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("hacli") and t not in exclude and t.is_alive())


def engine_dirs(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("hacli-engine-"))


def test_freeze_and_kill_chaos_exits_clean(healthy_lab, tmp_path: Path) -> None:
    """50 cycles of freeze (a step times out), kill, restore with multi-part
    operations in flight on both members: exit code 0, nothing on stderr from
    python-pkcs11's clean-up, no thread left after close, no work directory."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(TESTS / "hygiene_chaos.py"), str(healthy_lab.directory),
         str(tmp_path / "halog"), "50"],
        capture_output=True, text=True, timeout=150, env=child_env(tmpdir))
    seconds = time.monotonic() - started
    report = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\n" \
                                 f"stderr: {proc.stderr}"
    for word in NOISE:
        assert word not in proc.stderr, proc.stderr
    result = json.loads(report)
    assert result["timeouts"] == 50  # every cycle met its frozen member
    # and its operation went on on the other member (replayed), but where the
    # loaded machine made that member miss the short timeout as well
    assert result["moved"] + result["lost"] == 50 and result["moved"] >= 25, result
    assert [t for t in result["threads"] if t.startswith("hacli")] == [], result
    assert engine_dirs(tmpdir) == []
    # modules are never unloaded, but finalized copies are reused: no growth
    assert result["kept"] <= 6, result
    print(f"chaos: 50 cycles in {result['seconds']} s, process {seconds:.1f} s")


def test_no_thread_outlives_close_after_freeze_mid_operation(healthy_lab,
                                                             engine_factory) -> None:
    lab = healthy_lab
    before = set(threading.enumerate())
    engine = engine_factory(lab, timeout_ms=500)
    g = engine.group()
    victim = None
    try:
        admin = g.open_session()
        admin.login(lab.pin())
        _pub, priv = admin.generate_keypair(KeyType.RSA, 2048, label="hygiene-threads")
        sessions = [g.open_session() for _ in range(4)]
        for s in sessions:
            s.sign_init(priv, mechanism=SIGN)
            s.sign_update(b"in flight")
        on = [s.active_operations()["sign"] for s in sessions]
        assert set(on) == {m.serial for m in g.members}  # both members serve one
        victim = on[0]
        instance = next(m for m in g.members if m.serial == victim).conn.instance
        helpers = [t for t in instance.threads() if t.name.startswith("hacli-op-")]
        assert len(helpers) == on.count(victim)
        lab.hang(victim)
        sessions[0].sign_update(b"stuck")  # times out, then replayed on the other member
        assert sessions[0].active_operations()["sign"] != victim
        assert instance.abandoned
        # its transport is cut: the worker and the parked helpers end now,
        # while the member is still frozen
        assert wait_for(lambda: not instance.threads(), 3.0), instance.threads()
        assert all(not t.is_alive() for t in helpers)
        # the operations on the other member go on
        other = next(i for i, serial in enumerate(on) if serial != victim)
        sessions[other].sign_update(b"more")
        # close with the member still frozen (a recovery may be stuck in it)
        engine.close()
        assert hacli_threads(before) == []
    finally:
        if victim is not None:
            lab.restore(victim)


def test_initialize_stuck_on_frozen_member_is_cut(healthy_lab, tmp_path: Path) -> None:
    """A C_Initialize stuck on a frozen server (a recovery attempt) times out and
    its thread ends at once, with the member still frozen; the instance after it
    (the member restored) works."""
    lab = healthy_lab
    m = lab.members()[0]
    workdir = tempfile.mkdtemp(prefix="hacli-engine-", dir=tmp_path)
    registry = InstanceRegistry(workdir)
    lab.hang(m.serial)
    try:
        stuck = registry.current(lab.client_library, m.env, m.serial)
        assert stuck.server_path == str(m.socket)
        with pytest.raises(CallTimeout):
            stuck.load(0.5)
        assert stuck.abandoned
        assert wait_for(lambda: not stuck.threads(), 3.0), stuck.threads()
    finally:
        lab.restore(m.serial)
    fresh = registry.current(lab.client_library, m.env, m.serial)
    assert fresh is not stuck
    lib = fresh.load(5.0)
    assert fresh.call(lambda: [s.get_token().serial.decode().strip()
                               for s in lib.get_slots(token_present=True)],
                      timeout=5.0) == [m.serial]
    registry.close()
    assert not fresh.threads() and not os.path.exists(workdir)


def test_a_busy_member_is_not_a_dead_one(healthy_lab, tmp_path: Path) -> None:
    """Soak finding (caller-thread calls): a failover retry has a short budget
    (a quarter of the timeout); it met a healthy member busy with a long call
    (a key pair generation, an inventory), gave up waiting for its lock and
    abandoned it: a member with no fault was marked down, and with the others
    down the group lost its session keys.  A waiter behind a long call waits
    while that call is within its own deadline."""
    import threading

    lab = healthy_lab
    m = lab.members()[0]
    workdir = tempfile.mkdtemp(prefix="hacli-engine-", dir=tmp_path)
    registry = InstanceRegistry(workdir)
    try:
        inst = registry.current(lab.client_library, m.env, m.serial)
        assert inst.direct
        lib = inst.load(5.0)
        serial = lambda: [s.get_token().serial.decode().strip()  # noqa: E731
                          for s in lib.get_slots(token_present=True)]
        holding, release = threading.Event(), threading.Event()

        def long_call() -> None:  # a legitimate call that takes its time
            holding.set()
            release.wait(5.0)

        holder = threading.Thread(target=inst.call, args=(long_call,), kwargs={"timeout": 3.0})
        holder.start()
        assert holding.wait(5.0)
        threading.Timer(0.8, release.set).start()  # ends well within its 3 s
        assert inst.call(serial, timeout=0.25) == [m.serial]  # a short-budget retry waits
        assert not inst.abandoned
        holder.join(5.0)
    finally:
        registry.close()


def test_workdir_removed_on_close(healthy_lab, engine_factory) -> None:
    engine = engine_factory(healthy_lab)
    workdir = Path(engine._workdir)
    assert workdir.is_dir()
    owner = (workdir / OWNER_FILE).read_text().split()
    assert owner == [str(os.getpid()), str(process_start_time(os.getpid()))]
    assert sorted(os.listdir(workdir)) == [OWNER_FILE]  # copies go once mapped
    engine.close()
    assert not workdir.exists()


def test_stale_workdirs_removed_at_next_start(lab, tmp_path: Path, monkeypatch) -> None:
    """A work directory whose owner is gone (or whose pid now belongs to another
    process) is removed when the next engine starts; a live owner's is kept."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    dead_pid = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert wait_for(lambda: process_start_time(sleeper.pid) is not None, 5.0)

        def make(name: str, owner: str | None, age: float = 0.0) -> Path:
            d = tmpdir / name
            d.mkdir()
            (d / "m1-p11-kit-client.so").write_bytes(b"copy")
            if owner is not None:
                (d / OWNER_FILE).write_text(owner + "\n")
            if age:
                t = time.time() - age
                os.utime(d, (t, t))
            return d

        dead = make(f"hacli-engine-{dead_pid}-aaaa", f"{dead_pid} 12345")
        dead_unwritten = make(f"hacli-engine-{dead_pid}-bbbb", None)
        reused = make(f"hacli-engine-{os.getpid()}-cccc", f"{os.getpid()} 1")
        live = make(f"hacli-engine-{sleeper.pid}-dddd",
                    f"{sleeper.pid} {process_start_time(sleeper.pid)}")
        legacy_old = make("hacli-engine-k2j4h5g6", None, age=3600)
        legacy_new = make("hacli-engine-p9q8r7s6", None)
        not_ours = make("hacli-soak-x1y2z3w4", f"{dead_pid} 1")
        with Engine(lab_config(lab, tmp_path / "halog")):
            for d in (dead, dead_unwritten, reused, legacy_old):
                assert not d.exists(), d.name
            for d in (live, legacy_new, not_ours):
                assert d.is_dir(), d.name
        sleeper.kill()
        sleeper.wait(5)
        with Engine(lab_config(lab, tmp_path / "halog")):
            assert not live.exists()
        assert engine_dirs(tmpdir) == [legacy_new.name]
    finally:
        sleeper.kill()
        sleeper.wait(5)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert process_start_time(proc.pid) is None
    return proc.pid


_ENGINE_CHILD = r"""
import os, signal, sys
from pathlib import Path
from enginehelpers import lab_config
from hacli.engine import Engine
from hacli.lab import Lab
engine = Engine(lab_config(Lab(sys.argv[1]), Path(sys.argv[2])))
print(engine._workdir, flush=True)
if sys.argv[3] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_workdir_of_process_without_close(lab, tmp_path: Path, monkeypatch) -> None:
    """A process that exits without Engine.close() leaves no work directory; one
    that crashes leaves it until the next engine starts."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    runs = {}
    for how in ("exit", "crash"):
        runs[how] = subprocess.run(
            [sys.executable, "-c", _ENGINE_CHILD, str(lab.directory), str(tmp_path / "halog"),
             how], capture_output=True, text=True, timeout=60, env=child_env(tmpdir))
    assert runs["exit"].returncode == 0, runs["exit"].stderr
    assert runs["crash"].returncode == -signal.SIGKILL
    crashed = Path(runs["crash"].stdout.split()[0])
    assert not Path(runs["exit"].stdout.split()[0]).exists()  # removed at exit
    assert engine_dirs(tmpdir) == [crashed.name]
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    with Engine(lab_config(lab, tmp_path / "halog")) as engine:
        assert engine_dirs(tmpdir) == [Path(engine._workdir).name]
    assert engine_dirs(tmpdir) == []


_CLEANUP_CHILD = r"""
import gc, os, sys, tempfile, threading
import pkcs11
from hacli.engine.module import ModuleInstance
reports = []  # the thread each unraisable error is reported on
sys.addaudithook(lambda event, args: event == "sys.unraisablehook"
                 and reports.append(threading.current_thread().name))
softhsm, conf, label = sys.argv[1:4]
inst = ModuleInstance(softhsm, {"SOFTHSM2_CONF": conf}, tempfile.mkdtemp(prefix="hacli-engine-"))
lib = inst.load(10)

def orphan():
    # C_FindObjectsInit fails on a closed session: python-pkcs11 leaves the
    # search active; its finalizer's C_FindObjectsFinal then fails too
    session = lib.get_token(token_label=label).open(rw=True)
    session.close()
    search = session.get_objects()
    next(search)

try:
    inst.call(orphan, timeout=10)
except pkcs11.SessionHandleInvalid:
    print("raised", flush=True)
# cleaned up on the worker, not left to whoever drops the exception
print("left", sum(type(o).__name__ == "SearchIter" for o in gc.get_objects()), flush=True)
print("on", *reports, flush=True)

session = inst.call(lambda: lib.get_token(token_label=label).open(rw=True), timeout=10)

def interrupted():
    search = session.get_objects()  # a search left active in a local of a failed call
    next(search, None)
    raise RuntimeError("interrupted")

try:
    inst.call(interrupted, timeout=10)
except RuntimeError:
    # the exception is still alive here, yet the search has ended (on the worker):
    # a new one can start on the same session
    print("again", len(inst.call(lambda: list(session.get_objects()), timeout=10)) >= 0,
          flush=True)
inst.close()

class Mine:
    def __del__(self):
        raise ValueError("the application's own")

Mine()
raise pkcs11.PKCS11Error("the application's uncaught error")
"""


def test_pkcs11_cleanup_errors_stay_off_stderr(lab, tmp_path: Path) -> None:
    """python-pkcs11's finalizer errors are dropped; the application's own
    unraisable and uncaught errors still reach stderr."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLEANUP_CHILD, find_tools().softhsm2, str(lab.softhsm2_conf),
         lab.members()[0].label],
        capture_output=True, text=True, timeout=60, env=child_env(tmp_path))
    out = proc.stdout.split()
    assert out[:3] == ["raised", "left", "0"], proc.stdout + proc.stderr
    assert out[3] == "on" and out[-2:] == ["again", "True"], proc.stdout + proc.stderr
    assert out[4:-2] and all(t.startswith("hacli-module-") for t in out[4:-2]), proc.stdout
    assert "OperationContext" not in proc.stderr and "SessionHandleInvalid" not in proc.stderr
    assert "ValueError: the application's own" in proc.stderr
    assert "the application's uncaught error" in proc.stderr
    assert proc.returncode == 1
