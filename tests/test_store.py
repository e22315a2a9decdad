"""Loading, atomic saving, locked edits and discovery of configuration files."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hacli.conf import store
from hacli.conf.document import Document
from hacli.errors import ConfIOError, ConfNotFoundError, ConfParseError

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = os.geteuid() == 0


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "Chrystoki.conf"
    path.write_bytes((FIXTURES / "unix_full.conf").read_bytes())
    return path


# -- load ---------------------------------------------------------------------------


def test_load_parses_and_remembers_path(conf: Path) -> None:
    doc = store.load(conf)
    assert doc.get("HAConfiguration", "reconnAtt") == "-1"
    assert doc.path == str(conf)


@pytest.mark.parametrize("how", ["missing", "directory", "under_a_file"])
def test_load_unreadable(tmp_path: Path, how: str) -> None:
    path = {
        "missing": tmp_path / "nope.conf",
        "directory": tmp_path,
        "under_a_file": tmp_path / "file" / "Chrystoki.conf",
    }[how]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfIOError) as info:
        store.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_load_parse_error_carries_path(tmp_path: Path) -> None:
    path = tmp_path / "Chrystoki.conf"
    path.write_bytes(b"A = {\n   x = 1\n}\n")
    with pytest.raises(ConfParseError) as info:
        store.load(path)
    assert (info.value.path, info.value.line) == (str(path), 2)


# -- save ---------------------------------------------------------------------------


def test_save_replaces_content_and_leaves_no_temp(conf: Path) -> None:
    doc = store.load(conf)
    doc.set("HAConfiguration", "reconnAtt", "3")
    inode = conf.stat().st_ino
    store.save(doc, conf)
    assert store.load(conf).get("HAConfiguration", "reconnAtt") == "3"
    assert conf.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert temps(conf.parent) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_save_new_file_follows_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        store.save(Document.new(), tmp_path / "new.conf")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.conf").stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_save_keeps_mode(conf: Path, mode: int) -> None:
    conf.chmod(mode)
    store.save(store.load(conf), conf)
    assert stat.S_IMODE(conf.stat().st_mode) == mode


@pytest.mark.skipif(not ROOT, reason="giving a file to another owner needs root")
def test_save_keeps_owner(conf: Path) -> None:
    os.chown(conf, 1234, 5678)
    doc = store.load(conf)
    doc.set("Misc", "X", "1")
    store.save(doc, conf)
    st = conf.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_save_follows_symlink(conf: Path) -> None:
    link = conf.parent / "link.conf"
    link.symlink_to(conf.name)
    doc = store.load(link)
    doc.set("Misc", "X", "1")
    store.save(doc, link)
    assert link.is_symlink()
    assert store.load(conf).get("Misc", "X") == "1"


def test_save_read_only_file_is_refused(conf: Path) -> None:
    # Mode bits granting write to nobody mean read-only, even for root.
    before = conf.read_bytes()
    conf.chmod(0o444)
    doc = store.load(conf)
    doc.set("HAConfiguration", "reconnAtt", "3")
    with pytest.raises(ConfIOError, match="read-only"):
        store.save(doc, conf)
    assert conf.read_bytes() == before
    assert temps(conf.parent) == []


def test_save_read_only_directory_is_refused(conf: Path) -> None:
    before = conf.read_bytes()
    doc = store.load(conf)
    doc.set("HAConfiguration", "reconnAtt", "3")
    conf.parent.chmod(0o555)
    try:
        with pytest.raises(ConfIOError, match="read-only"):
            store.save(doc, conf)
    finally:
        conf.parent.chmod(0o755)
    assert conf.read_bytes() == before
    assert temps(conf.parent) == []


@pytest.mark.parametrize("how", ["under_a_file", "missing_dir", "path_is_dir"])
def test_save_impossible_paths(tmp_path: Path, how: str) -> None:
    (tmp_path / "file").write_text("untouched")
    path = {
        "under_a_file": tmp_path / "file" / "Chrystoki.conf",
        "missing_dir": tmp_path / "no" / "Chrystoki.conf",
        "path_is_dir": tmp_path,
    }[how]
    with pytest.raises(ConfIOError) as info:
        store.save(Document.new(), path)
    assert str(path) in str(info.value)
    assert (tmp_path / "file").read_text() == "untouched"
    assert temps(tmp_path) == []


def test_save_removes_only_dead_processes_temps(conf: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = conf.parent / f".{conf.name}.hacli-{int(dead.stdout)}-0a1b2c3d.tmp"
    live = conf.parent / f".{conf.name}.hacli-{os.getpid()}-0a1b2c3d.tmp"
    other = conf.parent / f".other.conf.hacli-{int(dead.stdout)}-0a1b2c3d.tmp"
    for p in (stale, live, other):
        p.write_text("partial")
    store.save(store.load(conf), conf)
    assert not stale.exists()
    assert live.exists() and other.exists()


# -- crash safety ---------------------------------------------------------------------

_WRITER = """
import sys
from hacli.conf import store
from hacli.conf.document import Document
path = sys.argv[1]
docs = [Document.parse(open(p, "rb").read()) for p in sys.argv[2:4]]
out = sys.stdout.buffer
i = 0
while True:
    store.save(docs[i % 2], path)
    i += 1
    out.write(b"."); out.flush()
"""


def test_sigkill_during_saves_never_corrupts(tmp_path: Path) -> None:
    small = (FIXTURES / "unix_compact.conf").read_bytes()
    # Big enough (~100 kB) that a kill often lands inside a write.
    padding = b"".join(b"   Key%04d = %s;\n" % (i, b"x" * 20) for i in range(3000))
    big = (FIXTURES / "unix_full.conf").read_bytes() + b"Padding = {\n" + padding + b"}\n"
    interrupted = 0
    (tmp_path / "a").write_bytes(small)
    (tmp_path / "b").write_bytes(big)
    work = tmp_path / "w"
    work.mkdir()
    path = work / "Chrystoki.conf"
    path.write_bytes(small)
    rng = random.Random(1234)
    for _ in range(30):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(tmp_path / "a"), str(tmp_path / "b")],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        for _ in range(rng.randint(1, 12)):  # let it complete a random number of saves ...
            assert child.stdout.read(1) == b"."
        for _ in range(rng.randint(0, 200_000)):  # ... and get a random way into the next
            pass
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        data = path.read_bytes()
        assert data in (small, big)
        Document.parse(data)
        # At most the one temp file of the save that was interrupted.
        assert len(temps(work)) <= 1
        interrupted += len(temps(work))
        assert sorted(p.name for p in work.iterdir() if not p.name.endswith(".tmp")) == [
            "Chrystoki.conf"
        ]
    assert interrupted >= 5, "the kills should often interrupt a save"
    # The next save cleans up after the killed writers.
    store.save(Document.parse(small), path)
    assert temps(work) == []


# -- edit ---------------------------------------------------------------------------


def test_edit_saves_changes(conf: Path) -> None:
    with store.edit(conf) as doc:
        doc.set("HAConfiguration", "AutoReconnectInterval", "120")
    assert store.load(conf).get("HAConfiguration", "AutoReconnectInterval") == "120"


def test_edit_without_change_does_not_write(conf: Path) -> None:
    inode = conf.stat().st_ino
    with store.edit(conf) as doc:
        doc.set("HAConfiguration", "reconnAtt", doc.get("HAConfiguration", "reconnAtt") or "")
    assert conf.stat().st_ino == inode


def test_edit_exception_writes_nothing(conf: Path) -> None:
    before, inode = conf.read_bytes(), conf.stat().st_ino
    with pytest.raises(RuntimeError), store.edit(conf) as doc:
        doc.set("HAConfiguration", "reconnAtt", "3")
        raise RuntimeError("changed my mind")
    assert conf.read_bytes() == before and conf.stat().st_ino == inode
    # The lock was released: another edit goes through at once.
    with store.edit(conf) as doc:
        doc.set("HAConfiguration", "reconnAtt", "4")
    assert store.load(conf).get("HAConfiguration", "reconnAtt") == "4"


def test_edit_in_read_only_directory(conf: Path) -> None:
    before = conf.read_bytes()
    conf.parent.chmod(0o555)
    try:
        with pytest.raises(ConfIOError, match="read-only"), store.edit(conf) as doc:
            doc.set("HAConfiguration", "reconnAtt", "3")
    finally:
        conf.parent.chmod(0o755)
    assert conf.read_bytes() == before


def test_edit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfIOError, match=r"nope\.conf"), store.edit(tmp_path / "nope.conf"):
        pass


def _edit_worker(path: str, n: int, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    with store.edit(path) as doc:
        doc.set("HAConfiguration", f"Worker{n:02}", str(n))


def test_concurrent_edits_lose_nothing(conf: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(20)
    workers = [ctx.Process(target=_edit_worker, args=(str(conf), n, barrier)) for n in range(20)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 20
    doc = store.load(conf)
    assert {k: v for k, v in doc.items("HAConfiguration") if k.startswith("Worker")} == {
        f"Worker{n:02}": str(n) for n in range(20)
    }
    assert doc.get("HAConfiguration", "reconnAtt") == "-1"
    assert sorted(p.name for p in conf.parent.iterdir()) == [conf.name]  # no temp, no lock


def test_a_writer_that_waited_on_a_replaced_file_locks_the_new_one(
    conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``save`` replaces the file, so a writer that was waiting for the old file's
    lock must not take that lock for the file's: a third writer may hold the
    new file's lock by then."""
    waiter_tries = threading.Semaphore(0)  # one release per file the waiter tries to lock
    entered, leave = threading.Event(), threading.Event()
    real_flock = store._flock

    def counted_flock(fd: int, deadline: float, busy: str) -> None:
        if threading.current_thread().name == "waiter":
            waiter_tries.release()
        real_flock(fd, deadline, busy)

    def waiter() -> None:
        with store.locked(conf):
            entered.set()
            leave.wait(30)

    monkeypatch.setattr(store, "_flock", counted_flock)
    thread = threading.Thread(target=waiter, name="waiter")
    with store.locked(conf):
        thread.start()
        assert waiter_tries.acquire(timeout=10)  # waiting on the file as it is now
        store.save(Document.parse(conf.read_bytes() + b"# replaced\n"), conf)
        third = store.locked(conf)  # another writer takes the new file's lock ...
        third.__enter__()
    try:  # ... and the old file's lock is free now: the waiter must see the file changed
        assert waiter_tries.acquire(timeout=10), "the waiter never looked at the new file"
        assert not entered.is_set()
    finally:
        third.__exit__(None, None, None)
    assert entered.wait(10)
    leave.set()
    thread.join(10)


def test_lock_timeout_names_the_file(conf: Path) -> None:
    with (store.locked(conf), pytest.raises(ConfIOError, match=r"locked by another process "
                                            r"\(waited 0.05 s\)"), store.locked(conf, 0.05)):
        pass


# -- discovery ----------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    env_dir = tmp_path / "envdir"
    env_dir.mkdir()
    xdg = tmp_path / "xdg"
    return {
        "env_dir": env_dir,
        "env_conf": env_dir / "Chrystoki.conf",
        "env_ini": env_dir / "crystoki.ini",
        "system": tmp_path / "etc" / "Chrystoki.conf",
        "xdg": xdg,
        "lab": xdg / "hacli" / "lab" / "Chrystoki.conf",
        "explicit": tmp_path / "mine.conf",
    }


def _touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("")


def _discover(places: dict[str, Path], explicit: Path | None = None) -> Path:
    environ = {
        "ChrystokiConfigurationPath": str(places["env_dir"]),
        "XDG_DATA_HOME": str(places["xdg"]),
        "HOME": "/nonexistent",
    }
    return store.discover(explicit, environ, system_conf=places["system"])


def test_discover_order(places: dict[str, Path]) -> None:
    p = places
    _touch(p["lab"])
    assert _discover(p) == p["lab"]
    _touch(p["system"])
    assert _discover(p) == p["system"]
    _touch(p["env_ini"])
    assert _discover(p) == p["env_ini"]
    _touch(p["env_conf"])
    assert _discover(p) == p["env_conf"]
    _touch(p["explicit"])
    assert _discover(p, p["explicit"]) == p["explicit"]


def test_discover_explicit_must_exist(places: dict[str, Path]) -> None:
    _touch(places["env_conf"])
    with pytest.raises(ConfNotFoundError, match=r"mine\.conf"):
        _discover(places, places["explicit"])
    with pytest.raises(ConfNotFoundError, match="directory"):
        _discover(places, places["env_dir"])


def test_discover_nothing_found_lists_every_place(places: dict[str, Path]) -> None:
    with pytest.raises(ConfNotFoundError) as info:
        _discover(places)
    message = str(info.value)
    for key in ("env_conf", "env_ini", "system", "lab"):
        assert str(places[key]) in message
    assert "--conf PATH" in message
    with pytest.raises(ConfNotFoundError, match=r"\$ChrystokiConfigurationPath \(not set\)"):
        store.discover(None, {"XDG_DATA_HOME": str(places["xdg"])}, system_conf=places["system"])


def test_discover_ignores_directories_named_like_the_file(places: dict[str, Path]) -> None:
    places["env_conf"].mkdir()
    _touch(places["lab"])
    assert _discover(places) == places["lab"]


def test_discover_system_conf_module_constant(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch(places["system"])
    monkeypatch.setattr(store, "SYSTEM_CONF", places["system"])
    assert store.discover(None, {"XDG_DATA_HOME": str(places["xdg"])}) == places["system"]


def test_default_lab_dir() -> None:
    assert store.default_lab_dir({"XDG_DATA_HOME": "/data", "HOME": "/home/u"}) == Path(
        "/data/hacli/lab"
    )
    assert store.default_lab_dir({"HOME": "/home/u"}) == Path("/home/u/.local/share/hacli/lab")
    # A relative XDG_DATA_HOME is invalid per the spec and ignored.
    assert store.default_lab_dir({"XDG_DATA_HOME": "rel", "HOME": "/home/u"}) == Path(
        "/home/u/.local/share/hacli/lab"
    )
