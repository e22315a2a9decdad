"""The durable change journal (hacli.engine.journal): no PKCS#11 needed.

What is checked: entries survive a reload, crash remains are handled as the
module promises (torn last line cut, anything else refused), compaction,
per-member delivery, file modes, several processes on one journal, and a
writer killed in the middle of its appends.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import filelock
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from hacli.engine.journal import ChangeJournal, JournalCorrupt, JournalError
from hacli.engine.replication import ident_key

ROOT = Path(__file__).resolve().parent.parent


def key_ident(label: str, kid: bytes = b"\x01\x02") -> dict[Any, Any]:
    return {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.ID: kid, Attribute.LABEL: label, Attribute.TOKEN: True}


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_round_trip_across_reload(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    data_ident = {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: "d",
                  Attribute.APPLICATION: "app", Attribute.TOKEN: True}
    e1 = j.record("destroy", key_ident("k"), None, ["m2", "m3"])
    e2 = j.record("set", key_ident("k2"), {Attribute.LABEL: "k3", Attribute.ENCRYPT: False,
                                           0x80000001: b"\x00vendor"}, ["m2"])
    e3 = j.record("create", data_ident, {Attribute.VALUE: b"\xffdata"}, ["m3"])
    assert [e1.seq, e2.seq, e3.seq] == [1, 2, 3]

    again = ChangeJournal.for_group("g1", jdir)
    assert again.path == j.path == jdir / "hacli" / "journal" / "g1.jsonl"
    m2 = again.pending("m2")
    assert [(e.seq, e.kind) for e in m2] == [(1, "destroy"), (2, "set")]
    assert m2[0].ident == key_ident("k") and m2[0].attrs is None
    assert m2[0].pending == {"m2", "m3"}
    assert m2[1].attrs == {Attribute.LABEL: "k3", Attribute.ENCRYPT: False,
                           0x80000001: b"\x00vendor"}
    assert m2[1].attrs[Attribute.ENCRYPT] is False  # a bool stays a bool
    m3 = again.pending("m3")
    assert [e.seq for e in m3] == [1, 3]
    assert m3[1].ident == data_ident and m3[1].attrs == {Attribute.VALUE: b"\xffdata"}
    # what this process returned is what a later process reads
    assert m2 == [e1, e2] and m3[1] == e3
    assert again.pending("m1") == []
    # sequence numbers go on after a reload
    assert again.record("destroy", key_ident("x"), None, ["m1"]).seq == 4
    # keys are the file format's ints, bytes are hex
    entry = json.loads(lines(j.path)[1])
    assert entry["ident"][0] == [int(Attribute.CLASS), int(ObjectClass.SECRET_KEY)]
    assert [int(Attribute.ID), {"hex": "0102"}] in entry["ident"]


def test_sequence_survives_compaction_of_everything(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir, compact_threshold=0)
    for i in range(5):
        e = j.record("destroy", key_ident(f"k{i}"), None, ["m1"])
        assert j.delivered(e.seq, "m1")
    assert j.entries() == []
    assert len(lines(j.path)) == 1  # only the header is left
    again = ChangeJournal.for_group("g1", jdir)
    assert again.record("destroy", key_ident("k"), None, ["m1"]).seq == 6


@pytest.mark.parametrize("torn", [
    b'{"seq":3,"kind":"destr',          # append cut short
    b'{"seq":3,"kind":"destroy","ide\n',  # cut short, newline from a later block
    b"\x00" * 300,                       # size extended, data never written (power loss)
])
def test_torn_last_line_is_dropped_and_cut(jdir: Path, torn: bytes) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    j.record("destroy", key_ident("a"), None, ["m2"])
    j.record("destroy", key_ident("b"), None, ["m2"])
    good = j.path.read_bytes()
    with open(j.path, "ab") as f:
        f.write(torn)

    again = ChangeJournal.for_group("g1", jdir)
    assert [e.seq for e in again.pending("m2")] == [1, 2]
    assert j.path.read_bytes() == good  # cut off, so the next append starts clean
    assert again.record("destroy", key_ident("c"), None, ["m2"]).seq == 3
    assert [e.ident[Attribute.LABEL] for e in ChangeJournal.for_group("g1", jdir)
            .pending("m2")] == ["a", "b", "c"]


def test_last_line_missing_only_its_newline_is_kept(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    j.record("destroy", key_ident("a"), None, ["m2"])
    j.record("destroy", key_ident("b"), None, ["m2"])
    os.truncate(j.path, j.path.stat().st_size - 1)  # the destroy happened: never drop it

    again = ChangeJournal.for_group("g1", jdir)
    assert [e.seq for e in again.pending("m2")] == [1, 2]
    assert j.path.read_bytes().endswith(b"\n")
    again.record("destroy", key_ident("c"), None, ["m2"])
    assert [e.seq for e in ChangeJournal.for_group("g1", jdir).pending("m2")] == [1, 2, 3]


@pytest.mark.parametrize("bad", [
    b"#garbage secret-ish 0xdeadbeef",
    b"\x00\x00\x00\x00",
    b'{"seq":2,"kind":"explode","ident":[],"attrs":null,"pending":["m2"]}',
    b'{"what":1}',
    b"",
])
def test_garbage_line_in_the_middle_is_corrupt(jdir: Path, bad: bytes) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    for label in "abc":
        j.record("destroy", key_ident(label), None, ["m2"])
    ls = lines(j.path)
    ls[2] = bad  # line 3: the second destroy
    j.path.write_bytes(b"\n".join(ls) + b"\n")
    before = j.path.read_bytes()

    with pytest.raises(JournalCorrupt) as info:
        ChangeJournal.for_group("g1", jdir)
    assert info.value.line == 3 and info.value.path == str(j.path)
    assert f"{j.path}:3:" in str(info.value)
    assert "deadbeef" not in str(info.value)  # the content is not echoed
    assert j.path.read_bytes() == before  # nothing repaired or dropped
    # a journal already open refuses too, rather than act on a partial view
    with pytest.raises(JournalCorrupt):
        j.pending("m2")


def test_sequence_numbers_must_increase(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    j.record("destroy", key_ident("a"), None, ["m2"])
    j.record("destroy", key_ident("b"), None, ["m2"])
    ls = lines(j.path)
    j.path.write_bytes(b"\n".join([*ls, ls[1], ls[2]]) + b"\n")
    with pytest.raises(JournalCorrupt, match=":4:"):
        ChangeJournal.for_group("g1", jdir)


def test_newer_format_is_not_touched(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    j.path.write_bytes(b'{"journal":2,"gen":"x","last_seq":0}\n{"future":true}\n')
    with pytest.raises(JournalError, match="newer"):
        ChangeJournal.for_group("g1", jdir)


def test_compaction_keeps_live_entries_and_shrinks_the_file(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir, compact_threshold=8)
    seqs = [j.record("set", key_ident(f"k{i}"), {Attribute.LABEL: f"n{i}"}, ["m1", "m2"]).seq
            for i in range(20)]
    for s in seqs:
        j.delivered(s, "m1")
    grown = j.path.stat().st_size
    assert len(lines(j.path)) == 1 + 20 + 20  # header, entries, deliveries: not yet stale
    for s in seqs[:15]:
        j.delivered(s, "m2")
    # 15 dead entries + 35 delivery lines against 5 live entries: rewritten
    assert len(lines(j.path)) < 1 + 20 + 35
    assert j.path.stat().st_size < grown
    assert not list(j.path.parent.glob("*.tmp"))
    live = [e.seq for e in j.entries()]
    assert live == seqs[15:]

    again = ChangeJournal.for_group("g1", jdir)
    assert [e.seq for e in again.pending("m2")] == seqs[15:]
    assert again.pending("m1") == []
    assert [e.attrs for e in again.pending("m2")] == [{Attribute.LABEL: f"n{i}"}
                                                      for i in range(15, 20)]
    assert again.record("destroy", key_ident("z"), None, ["m1"]).seq == 21
    assert again.delivered(21, "m1")
    assert again.compact()
    assert len(lines(j.path)) == 1 + 5
    assert not again.compact()  # nothing stale


def test_compaction_on_load(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir, compact_threshold=10**9)
    for i in range(40):
        e = j.record("destroy", key_ident(f"k{i}"), None, ["m1"])
        if i % 10:
            j.delivered(e.seq, "m1")
    assert len(lines(j.path)) == 1 + 40 + 36
    (j.path.parent / f".{j.path.name}.999.dead.tmp").write_bytes(b"left by a crash")
    again = ChangeJournal.for_group("g1", jdir, compact_threshold=4)
    assert len(lines(j.path)) == 1 + 4
    assert [e.seq for e in again.pending("m1")] == [1, 11, 21, 31]
    assert not list(j.path.parent.glob("*.tmp"))


def test_delivered_per_member(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    e = j.record("destroy", key_ident("k"), None, ["m1", "m2"])
    assert j.delivered(e.seq, "m1")
    assert not j.delivered(e.seq, "m1")  # twice: no-op
    assert not j.delivered(e.seq, "m9")  # never pending
    assert not j.delivered(999, "m1")
    assert j.pending("m1") == []
    assert [x.pending for x in j.pending("m2")] == [{"m2"}]
    assert j.explains(ident_key(key_ident("k"))) is not None

    again = ChangeJournal.for_group("g1", jdir)
    assert again.pending("m1") == [] and len(again.pending("m2")) == 1
    assert again.delivered(e.seq, "m2")
    assert again.entries() == [] and again.explains(key_ident("k")) is None
    assert ChangeJournal.for_group("g1", jdir).entries() == []
    assert not j.delivered(e.seq, "m2")  # the first instance sees the other's delivery


def test_forget_member(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    both = j.record("destroy", key_ident("a"), None, ["m1", "m2"])
    j.record("destroy", key_ident("b"), None, ["m1"])
    assert j.forget_member("m1") == 2
    assert j.forget_member("m1") == 0
    assert j.pending("m1") == []
    assert [(e.seq, e.pending) for e in j.entries()] == [(both.seq, {"m2"})]
    later = j.record("set", key_ident("a"), {Attribute.LABEL: "c"}, ["m1"])  # m1 re-added

    again = ChangeJournal.for_group("g1", jdir)
    assert [e.seq for e in again.pending("m1")] == [later.seq]  # earlier entries stay forgotten
    assert [e.seq for e in again.pending("m2")] == [both.seq]


def test_explains_latest_live_entry(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    k = key_ident("k")
    assert j.explains(ident_key(k)) is None
    made = j.record("create", k, None, ["m2"])
    gone = j.record("destroy", k, None, ["m2"])
    j.record("destroy", key_ident("k", kid=b"\x09"), None, ["m2"])  # another identity
    assert j.explains(ident_key(k)) == gone
    j.delivered(gone.seq, "m2")
    assert j.explains(ident_key(k)) == made
    # a relabel is about the identity before and after
    moved = j.record("set", key_ident("old"), {Attribute.LABEL: "new"}, ["m3"])
    assert j.explains(ident_key(key_ident("old"))) == moved
    assert j.explains(ident_key(key_ident("new"))) == moved
    # the key is the replication one, computed from live python-pkcs11 values
    # (enums) or from a reloaded journal (plain ints)
    again = ChangeJournal.for_group("g1", jdir)
    e = again.explains(ident_key(key_ident("new")))
    assert e is not None and e.seq == moved.seq and e.key == ident_key(key_ident("old"))


@pytest.mark.parametrize(("ident", "attrs"), [
    (key_ident("k"), {Attribute.VALUE: b"\x11" * 32}),
    ({**key_ident("k"), Attribute.CLASS: ObjectClass.PRIVATE_KEY}, {Attribute.VALUE: b"\x11"}),
    ({Attribute.LABEL: "no class"}, {Attribute.VALUE: b"\x11"}),
    ({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "p"},
     {Attribute.PRIME_1: b"\x11"}),
    ({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "p"},
     {Attribute.PRIVATE_EXPONENT: b"\x11"}),
    ({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "p"},
     {Attribute.COEFFICIENT: b"\x11"}),
    ({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: "p"},
     {Attribute.EXPONENT_2: b"\x11"}),
    ({**key_ident("k"), Attribute.VALUE: b"\x11"}, None),  # in the identity
])
def test_key_material_is_refused(jdir: Path, ident: dict[Any, Any],
                                 attrs: dict[Any, Any] | None) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    before = j.path.read_bytes()
    kind = "create" if attrs is None else "set"
    with pytest.raises(ValueError, match="key material") as info:
        j.record(kind, ident, attrs, ["m2"])
    assert "11" not in str(info.value)
    assert j.path.read_bytes() == before
    assert j.entries() == []


def test_public_values_are_accepted(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    cert = {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: "c", Attribute.ID: b"1"}
    j.record("create", cert, {Attribute.VALUE: b"\x30\x82"}, ["m2"])
    pub = {Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "p"}
    j.record("set", pub, {Attribute.MODULUS: b"\x01", Attribute.PUBLIC_EXPONENT: b"\x01\x00\x01"},
             ["m2"])
    assert len(ChangeJournal.for_group("g1", jdir).pending("m2")) == 2


def test_bad_requests(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    with pytest.raises(ValueError):
        j.record("rename", key_ident("k"), None, ["m2"])
    with pytest.raises(ValueError):
        j.record("set", key_ident("k"), None, ["m2"])
    with pytest.raises(ValueError):
        j.record("destroy", key_ident("k"), None, [])
    with pytest.raises(ValueError):
        j.record("destroy", {}, None, ["m2"])
    with pytest.raises(TypeError, match="float"):
        j.record("set", key_ident("k"), {Attribute.LABEL: 1.5}, ["m2"])
    with pytest.raises(TypeError):
        j.record("set", key_ident("k"), {"label": "x"}, ["m2"])
    assert j.entries() == [] and len(lines(j.path)) == 1
    for serial in ("../g", "", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            ChangeJournal.for_group(serial, jdir)


def test_file_and_directory_modes(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = os.umask(0)  # a permissive umask must not leak into the journal's modes
    try:
        j = ChangeJournal.for_group("g1", jdir)
        j.record("destroy", key_ident("k"), None, ["m2"])
        j.compact()
        j.delivered(1, "m2")
        j.compact()  # a rewritten file keeps the mode
    finally:
        os.umask(old)
    assert stat.S_IMODE(j.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(j.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((jdir / "hacli").stat().st_mode) == 0o700  # created by us
    # an existing journal directory and file with wider modes are tightened
    os.chmod(j.path.parent, 0o755)
    os.chmod(j.path, 0o644)
    again = ChangeJournal.for_group("g1", jdir)
    assert stat.S_IMODE(again.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(again.path.stat().st_mode) == 0o600

    # default place: $XDG_STATE_HOME, a relative value ignored (XDG spec)
    monkeypatch.setenv("XDG_STATE_HOME", str(jdir / "xdg"))
    assert ChangeJournal.for_group("g2").path == jdir / "xdg" / "hacli" / "journal" / "g2.jsonl"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")
    monkeypatch.setenv("HOME", str(jdir / "home"))
    assert ChangeJournal.for_group("g3").path == (
        jdir / "home" / ".local" / "state" / "hacli" / "journal" / "g3.jsonl")


def test_two_instances_see_each_other(jdir: Path) -> None:
    """What another process appended or compacted is read before acting."""
    a = ChangeJournal.for_group("g1", jdir, compact_threshold=0)
    b = ChangeJournal.for_group("g1", jdir, compact_threshold=0)
    e = a.record("destroy", key_ident("x"), None, ["m1", "m2"])
    assert b.pending("m1") == [e]
    assert b.record("destroy", key_ident("y"), None, ["m1"]).seq == 2
    b.delivered(1, "m1")
    assert b.compact()  # b rewrites the file: a must notice
    assert a.pending("m1")[0].seq == 2
    assert a.record("destroy", key_ident("z"), None, ["m1"]).seq == 3
    assert [x.seq for x in b.pending("m1")] == [2, 3]
    assert [x.seq for x in b.pending("m2")] == [1]


def test_threads_share_one_journal(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir, compact_threshold=4)
    other = ChangeJournal.for_group("g1", jdir, compact_threshold=4)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        jj = j if n % 2 else other
        try:
            start.wait()
            for i in range(50):
                e = jj.record("destroy", key_ident(f"t{n}-{i}"), None,
                              ["keep", f"t{n}", f"t{n}b"])
                jj.delivered(e.seq, f"t{n}")
                jj.delivered(e.seq, f"t{n}b")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = ChangeJournal.for_group("g1", jdir).pending("keep")
    assert [e.seq for e in got] == list(range(1, 201))
    assert {e.ident[Attribute.LABEL] for e in got} == {f"t{n}-{i}" for n in range(4)
                                                      for i in range(50)}


def _append_many(state_dir: str, name: str, count: int, deliver: bool,
                 start: Any, out: Any) -> None:
    """A second process appending (and, with ``deliver``, causing rewrites).
    Puts ``(name, seqs)``, or ``(name, error text)`` so the test fails at once."""
    try:
        j = ChangeJournal.for_group("g1", Path(state_dir), compact_threshold=4)
        seqs = []
        start.wait(timeout=60)
        for i in range(count):
            e = j.record("destroy", key_ident(f"{name}-{i}"), None,
                         ["keep", name, name + "b"] if deliver else ["keep"])
            if deliver:  # two dead lines per live entry: rewrites while the other appends
                j.delivered(e.seq, name)
                j.delivered(e.seq, name + "b")
            seqs.append(e.seq)
        out.put((name, seqs))
    except BaseException as e:
        out.put((name, f"{type(e).__name__}: {e}"))
        raise


@pytest.mark.parametrize("deliver", [False, True], ids=["append", "append+compact"])
def test_two_processes_append_concurrently(jdir: Path, deliver: bool) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    out = ctx.Queue()
    procs = [ctx.Process(target=_append_many, args=(str(jdir), f"p{n}", 200, deliver, start, out))
             for n in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    assert all(isinstance(r, list) for r in results.values()), results
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    given = results["p0"] + results["p1"]
    assert len(set(given)) == 400  # unique sequence numbers
    got = ChangeJournal.for_group("g1", jdir).pending("keep")
    assert sorted(given) == [e.seq for e in got] == list(range(1, 401))
    assert {e.ident[Attribute.LABEL] for e in got} == {f"p{n}-{i}" for n in range(2)
                                                      for i in range(200)}
    # the two really interleaved (otherwise this test proves nothing about locking)
    writers = [e.ident[Attribute.LABEL].split("-")[0] for e in got]
    assert sum(a != b for a, b in itertools.pairwise(writers)) >= 2
    if deliver:  # rewrites happened while both were appending
        assert len(lines(jdir / "hacli" / "journal" / "g1.jsonl")) < 1 + 400 * 3


WRITER = r"""
import sys
from pathlib import Path
from hacli.engine.journal import ChangeJournal
j = ChangeJournal.for_group("g1", Path(sys.argv[1]), compact_threshold=4)
i = 0
while True:
    e = j.record("destroy", {0: 4, 3: f"w-{i}", 258: bytes(300)}, None, ["keep", "gone"])
    print("rec", e.seq, flush=True)    # acknowledged: on disk
    if j.delivered(e.seq, "gone"):     # dead lines, so rewrites happen too
        print("done", e.seq, flush=True)
    i += 1
"""


def test_killed_writer_leaves_a_loadable_journal(jdir: Path) -> None:
    acknowledged: set[int] = set()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for round_ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(jdir)], stdout=subprocess.PIPE,
                                env=env, text=True)
        assert proc.stdout is not None
        # let it get going (a different point each round), then kill it mid-loop
        want = 20 + 7 * round_
        n = 0
        for line in proc.stdout:
            kind, seq = line.split()
            if kind == "rec":
                acknowledged.add(int(seq))
                n += 1
                if n >= want:
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        j = ChangeJournal.for_group("g1", jdir)  # loads (torn tail cut, if any)
        got = [e.seq for e in j.pending("keep")]
        assert got == sorted(set(got))
        assert acknowledged <= set(got)  # nothing acknowledged is lost
        # a delivery is missing only for an entry whose writer died right after it
        assert len(j.pending("gone")) <= round_ + 1
    # and it is still usable
    e = ChangeJournal.for_group("g1", jdir).record("destroy", key_ident("after"), None, ["keep"])
    assert e.seq > max(acknowledged)


def test_lock_held_elsewhere_times_out(jdir: Path) -> None:
    j = ChangeJournal.for_group("g1", jdir)
    held = filelock.FileLock(str(j.path) + ".lock")
    with held, pytest.raises(JournalError, match="lock"):
        ChangeJournal.for_group("g1", jdir, lock_timeout=0.05)
    assert ChangeJournal.for_group("g1", jdir, lock_timeout=0.05).entries() == []
