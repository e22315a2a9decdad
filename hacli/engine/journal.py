"""A durable journal of the changes a member missed while it was down.

Why it exists: a destroy or attribute change made through the group while a
member is down cannot reach that member.  Kept only in memory
(``Member.journal``) it is lost when the process ends, and the next
synchronisation, which takes the union of the members' inventories, copies
the destroyed object back from the member that missed the destroy: a
revoked key comes back.  This module keeps those changes in a file that
outlives the process, so a later process (``hagroup synchronize``) can
replay them, and can tell "destroyed on purpose while member X was down"
from an object nobody knows about (:meth:`ChangeJournal.explains`).

It is pure bookkeeping: no PKCS#11 call is made here (the engine wires it
in).  Only identities and non-secret attribute values are written; key
material is refused (:func:`refuse_key_material`).

File: ``$XDG_STATE_HOME/hacli/journal/<group serial>.jsonl`` (directory
0700, file 0600), one JSON object a line, append-only between compactions:

* line 1, the header: ``{"journal": 1, "gen": <random hex>, "group": ...,
  "last_seq": n}`` (``gen`` changes at every rewrite, which is how another
  process notices the file was compacted under it; ``last_seq`` keeps
  sequence numbers increasing across a compaction that dropped every entry);
* an entry: ``{"seq": n, "kind": "destroy"|"set"|"create", "ident": [[cka,
  value], ...], "attrs": [[cka, value], ...] | null, "pending": [serial,
  ...], "time": unix time}``; ``bytes`` values are ``{"hex": "..."}``, other
  values JSON ``int``/``bool``/``str``; attribute types are ints;
* ``{"done": seq, "member": serial}``: that member has the change now;
* ``{"forget": serial}``: the member left the group; it is dropped from
  the entries before this line (a member added again later starts clean).

Durability: every line is written, flushed and ``fsync``-ed before the call
returns, so the application is told a change succeeded only once it is on
disk.  Compaction writes a temporary file in the same directory, ``fsync``-s
it, renames it over the journal and ``fsync``-s the directory.

Crash rules when reading: a last line that does not parse is the remains of
an append that never returned (nobody was told it succeeded) and is cut
off.  A last line that parses but lacks its newline is kept (the change it
records did happen on the alive members) and the newline is added.  A bad
line anywhere else is :class:`JournalCorrupt`: dropping it silently might
drop a destroy.

Concurrency: a :class:`threading.RLock` within a process, and a
:class:`filelock.FileLock` (``<journal>.lock``) around every read and write
across processes; each operation first reads what other processes appended
(or notices their compaction) so sequence numbers stay unique.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
from pkcs11 import Attribute, ObjectClass

from hacli.errors import EngineError

#: Format version written in the header line.
FORMAT = 1
#: The kinds of change an entry records.
KINDS = ("destroy", "set", "create")
#: Below this many stale lines a journal is never rewritten (rewrites cost an fsync of
#: the directory; a few stale lines cost nothing).
COMPACT_THRESHOLD = 32
#: Seconds to wait for another process's lock before giving up with JournalError.
LOCK_TIMEOUT = 30.0

#: A hashable identity, as :func:`hacli.engine.replication.ident_key` makes it.
IdentKey = tuple[tuple[int, Any], ...]

#: Private-key components: never journaled, whatever the object's class says.
PRIVATE_VALUE_ATTRS = frozenset(int(a) for a in (
    Attribute.PRIVATE_EXPONENT, Attribute.PRIME_1, Attribute.PRIME_2,
    Attribute.EXPONENT_1, Attribute.EXPONENT_2, Attribute.COEFFICIENT))
#: Classes whose CKA_VALUE is key material.
SECRET_VALUE_CLASSES = frozenset({int(ObjectClass.SECRET_KEY), int(ObjectClass.PRIVATE_KEY)})

_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_MAX_ULONG = 2**64 - 1
_POLL = 0.002  # filelock polls a held lock; journal operations last about one fsync


class JournalError(EngineError):
    """The change journal cannot be read or written (I/O error, lock timeout,
    a format from a newer hacli).  A change that could not be journaled must
    not be reported as replicated."""


class JournalCorrupt(JournalError):
    """A journal line other than the last one is not a journal line.

    Not repaired automatically: the damaged line may have been a destroy,
    and skipping it would bring a destroyed key back.  The message names the
    file and line, never the line's content (it may hold attribute values).
    """

    def __init__(self, path: Path | str, line: int, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{path}:{line}: corrupt change journal ({reason}); "
                         "not repaired automatically because the line may record a destroy")


def state_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME``, or ``~/.local/state``.

    A relative value is ignored, as the XDG spec says: a journal found
    relative to the working directory would be a different journal for each
    directory a command runs in, and destroys recorded in one would be
    invisible to a synchronisation run from another.  (``hacli.cli.ha`` has
    the same lookup for its status memory; the engine cannot import the CLI
    layer, which pulls in click and rich.)
    """
    value = environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(value):
        home = environ.get("HOME") or os.path.expanduser("~")
        value = os.path.join(home, ".local", "state")
    return Path(value)


def journal_dir(state_dir: Path | None = None) -> Path:
    """Where the journals live: ``<state_dir or $XDG_STATE_HOME>/hacli/journal``."""
    return (state_dir if state_dir is not None else state_home()) / "hacli" / "journal"


def _ident_key(ident: Mapping[Any, Any]) -> IdentKey:
    # Imported here rather than at the top: the engine's modules that will use the
    # journal (member, replicas) are imported by hacli.engine.replication itself, so
    # a top-level import would be circular once the journal is wired in.
    from hacli.engine.replication import ident_key

    return ident_key(dict(ident))


def _attr_name(a: int) -> str:
    try:
        return "CKA_" + Attribute(a).name
    except ValueError:
        return f"CKA_0x{a:08X}"


def _class_of(ident: Mapping[Any, Any]) -> int | None:
    for k, v in ident.items():
        if isinstance(k, int) and k == Attribute.CLASS and isinstance(v, int):
            return int(v)
    return None


def refuse_key_material(ident: Mapping[Any, Any], attrs: Mapping[Any, Any] | None) -> None:
    """Raise ValueError when ``ident`` or ``attrs`` carries key material.

    The journal is a plain file that outlives the process; secret values
    never reach a host disk.  Refused: any private-key component
    (:data:`PRIVATE_VALUE_ATTRS`), and ``CKA_VALUE`` unless the identity's
    class is known not to be a secret or private key (no ``CKA_CLASS`` counts
    as secret: it cannot be shown otherwise).  The message names the
    attribute, never the value.
    """
    cls = _class_of(ident)
    secret = cls is None or cls in SECRET_VALUE_CLASSES
    for part, d in (("identity", ident), ("attributes", attrs or {})):
        for k in d:
            if not isinstance(k, int):
                continue  # not an attribute type at all: the encoder refuses it
            a = int(k)
            if a in PRIVATE_VALUE_ATTRS or (a == int(Attribute.VALUE) and secret):
                what = "an object of unknown class" if cls is None else (
                    f"a {'secret' if cls == int(ObjectClass.SECRET_KEY) else 'private'} key"
                    if secret else "this object")
                raise ValueError(f"refusing to journal {_attr_name(a)} of {what} "
                                 f"(in the {part}): key material is never written to disk")


def _enc_value(a: int, v: Any) -> Any:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)  # an IntEnum (ObjectClass, KeyType) is stored as its number
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return {"hex": bytes(v).hex()}
    raise TypeError(f"cannot journal a {type(v).__name__} value for {_attr_name(a)} "
                    "(int, bool, str or bytes only)")


def _enc_attrs(d: Mapping[Any, Any]) -> list[list[Any]]:
    out = []
    for k, v in d.items():
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= int(k) <= _MAX_ULONG:
            raise TypeError(f"attribute types must be CKA_* numbers, not {type(k).__name__}")
        out.append([int(k), _enc_value(int(k), v)])
    out.sort(key=lambda p: p[0])
    return out


def _dec_value(v: Any) -> int | bool | str | bytes:
    if isinstance(v, bool | int | str):
        return v
    if isinstance(v, dict) and set(v) == {"hex"} and isinstance(v["hex"], str):
        return bytes.fromhex(v["hex"])
    raise ValueError("bad attribute value")


def _dec_attrs(pairs: Any) -> dict[Any, Any]:
    if not isinstance(pairs, list):
        raise ValueError("attributes are not a list")
    out: dict[Any, Any] = {}
    for p in pairs:
        if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], int)
                and not isinstance(p[0], bool)):
            raise ValueError("bad attribute pair")
        try:
            k: Any = Attribute(p[0])  # python-pkcs11 templates expect Attribute keys
        except ValueError:
            k = p[0]  # vendor-defined
        out[k] = _dec_value(p[1])
    return out


@dataclass(frozen=True)
class Entry:
    """One change, as the journal holds it (a snapshot: later deliveries do
    not change it).

    ``ident`` and ``attrs`` are read back from the file format, so keys are
    :class:`pkcs11.Attribute` (plain ``int`` for vendor attributes) and values
    ``int``/``bool``/``str``/``bytes`` (an ``ObjectClass`` comes back as its
    number, which compares and hashes equal).
    """

    seq: int
    kind: str
    ident: dict[Any, Any]
    attrs: dict[Any, Any] | None = field(repr=False)  # may hold a data object's value
    pending: frozenset[str]
    time: float = field(compare=False)

    @property
    def key(self) -> IdentKey:
        """The identity as :func:`hacli.engine.replication.ident_key` makes it."""
        return _ident_key(self.ident)

    @property
    def live(self) -> bool:
        """True while some member still misses this change."""
        return bool(self.pending)


@dataclass
class _Rec:
    seq: int
    kind: str
    ident: dict[Any, Any]
    attrs: dict[Any, Any] | None
    pending: set[str]
    time: float
    #: identities this entry is about: before, and for a "set" that changes an
    #: identifying attribute (a relabel), after the change too
    keys: tuple[IdentKey, ...] = ()

    def snapshot(self) -> Entry:
        return Entry(self.seq, self.kind, dict(self.ident),
                     None if self.attrs is None else dict(self.attrs),
                     frozenset(self.pending), self.time)

    def line(self) -> bytes:
        obj = {"seq": self.seq, "kind": self.kind, "ident": _enc_attrs(self.ident),
               "attrs": None if self.attrs is None else _enc_attrs(self.attrs),
               "pending": sorted(self.pending), "time": self.time}
        return _dumps(obj)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii") + b"\n"


def _rec_from(obj: dict[str, Any]) -> _Rec:
    seq, kind, pending, t = obj["seq"], obj["kind"], obj["pending"], obj.get("time", 0.0)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
        raise ValueError("bad sequence number")
    if kind not in KINDS:
        raise ValueError("unknown kind")
    if not (isinstance(pending, list) and all(isinstance(s, str) and s for s in pending)):
        raise ValueError("bad pending list")
    if isinstance(t, bool) or not isinstance(t, int | float):
        raise ValueError("bad time")
    ident = _dec_attrs(obj["ident"])
    attrs = None if obj["attrs"] is None else _dec_attrs(obj["attrs"])
    keys = [_ident_key(ident)]
    if attrs:
        after = {k: attrs.get(k, v) for k, v in ident.items()}
        if after != ident:
            keys.append(_ident_key(after))
    return _Rec(seq, kind, ident, attrs, set(pending), float(t), tuple(keys))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    chunks = []
    while n > 0:
        b = os.pread(fd, n, offset)
        if not b:
            break
        chunks.append(b)
        n -= len(b)
        offset += len(b)
    return b"".join(chunks)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(d: Path) -> None:
    """Create ``d`` and any missing parent 0700 (umask notwithstanding), each
    creation made durable in its parent; existing directories are left as
    they are (they may be shared, like /tmp)."""
    missing = []
    p = d
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(p, 0o700)
        _fsync_dir(p.parent)


class ChangeJournal:
    """The durable journal of one HA group (see the module docstring).

    Every public method takes the in-process lock and the file lock, first
    reads what other processes appended, then acts; all of them are safe to
    call from any thread.
    """

    def __init__(self, path: Path | str, *, group: str = "",
                 compact_threshold: int = COMPACT_THRESHOLD,
                 lock_timeout: float = LOCK_TIMEOUT):
        """Open (creating if needed) the journal at ``path`` and load it.

        Raises :class:`JournalCorrupt` for a damaged line before the last,
        :class:`JournalError` when the file cannot be used.
        """
        self._path = Path(path)
        self._group = group
        self._threshold = compact_threshold
        self._timeout = lock_timeout
        self._lock = threading.RLock()
        self._flock = filelock.FileLock(str(self._path) + ".lock", timeout=lock_timeout,
                                        mode=0o600)
        # What has been read of the current file generation.
        self._head = b""  # its header line; another header means another generation
        self._offset = 0  # bytes read (the file's size after a refresh)
        self._lineno = 0  # complete lines read
        self._body = 0  # non-header lines read (live or not)
        self._prev_seq = 0  # last entry seq read in this generation
        self._last_seq = 0  # highest seq ever given (header or entries)
        self._recs: dict[int, _Rec] = {}  # live entries, in seq order
        try:
            _make_dirs(self._path.parent)
        except OSError as e:
            raise JournalError(f"{self._path.parent}: cannot create the journal "
                               f"directory: {e.strerror}") from e
        with self._locked():
            self._remove_stale_temps()
            self._maybe_compact()

    @classmethod
    def for_group(cls, group_serial: str, state_dir: Path | None = None,
                  **kwargs: Any) -> ChangeJournal:
        """The journal of the HA group ``group_serial``:
        ``<state_dir or $XDG_STATE_HOME>/hacli/journal/<group_serial>.jsonl``.

        The journal directory is ours, so it is set to 0700 even when it
        already existed with wider permissions.
        """
        if not _SERIAL_RE.match(group_serial):
            raise ValueError("a group serial for a journal file name is letters, digits, "
                             "'.', '_' or '-' (not starting with '.' or '-')")
        d = journal_dir(state_dir)
        try:
            _make_dirs(d)
            if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
                os.chmod(d, 0o700)
        except OSError as e:
            raise JournalError(f"{d}: cannot create the journal directory: {e.strerror}") from e
        return cls(d / f"{group_serial}.jsonl", group=group_serial, **kwargs)

    @property
    def path(self) -> Path:
        """The journal file."""
        return self._path

    def __repr__(self) -> str:
        return f"<ChangeJournal {str(self._path)!r} live={len(self._recs)}>"

    # -- public operations ------------------------------------------------

    def record(self, kind: str, ident: Mapping[Any, Any], attrs: Mapping[Any, Any] | None,
               pending_members: Iterable[str]) -> Entry:
        """Durably record a change that ``pending_members`` missed.

        Returns only once the entry is on disk (written and ``fsync``-ed):
        call it before telling the application the change succeeded.
        ``kind`` is ``"destroy"`` (``attrs`` None), ``"set"`` (``attrs`` the
        new values) or ``"create"`` (``attrs`` None or a non-secret template).
        Raises ValueError for key material, an unknown kind or no pending
        member (a change nobody missed needs no journal), TypeError for a
        value the file cannot hold, JournalError when the disk refuses.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if not isinstance(ident, Mapping) or not ident:
            raise ValueError("an identity is a non-empty dict of CKA_* -> value")
        if kind == "set" and not attrs:
            raise ValueError("a 'set' entry needs the attributes that were set")
        if kind == "destroy" and attrs:
            raise ValueError("a 'destroy' entry carries no attributes")
        members = set()
        for s in pending_members:
            if not isinstance(s, str) or not s:
                raise ValueError("member serials are non-empty strings")
            members.add(s)
        if not members:
            raise ValueError("no pending member: a change every member has needs no journal")
        ident_enc = _enc_attrs(ident)
        attrs_enc = _enc_attrs(attrs) if attrs else None
        refuse_key_material(ident, attrs)
        with self._locked() as fd:
            obj = {"seq": self._last_seq + 1, "kind": kind, "ident": ident_enc,
                   "attrs": attrs_enc, "pending": sorted(members), "time": time.time()}
            # build the record from its own serialisation, so this process sees
            # exactly what a later process will read back
            rec = _rec_from(json.loads(_dumps(obj)))
            self._append(fd, rec.line())
            self._last_seq = self._prev_seq = rec.seq
            self._recs[rec.seq] = rec
            return rec.snapshot()

    def pending(self, member_serial: str) -> list[Entry]:
        """The changes ``member_serial`` still misses, oldest first (replay order)."""
        with self._locked():
            return [r.snapshot() for r in self._recs.values() if member_serial in r.pending]

    def entries(self) -> list[Entry]:
        """Every live entry, oldest first."""
        with self._locked():
            return [r.snapshot() for r in self._recs.values()]

    def delivered(self, seq: int, member_serial: str) -> bool:
        """Durably note that ``member_serial`` has change ``seq`` now.

        Returns False (and writes nothing) when the entry is not live or not
        pending for that member: delivering twice is harmless, as replaying a
        destroy or a set twice is.
        """
        with self._locked() as fd:
            rec = self._recs.get(seq)
            if rec is None or member_serial not in rec.pending:
                return False
            self._append(fd, _dumps({"done": seq, "member": member_serial}))
            self._drop(rec, member_serial)
            self._maybe_compact()
            return True

    def delivered_many(self, seqs: Iterable[int], member_serial: str) -> int:
        """:meth:`delivered` for several changes, with one write and one fsync
        (a catch-up replays many).  Returns how many were pending."""
        with self._locked() as fd:
            recs = [r for r in (self._recs.get(q) for q in seqs)
                    if r is not None and member_serial in r.pending]
            if not recs:
                return 0
            self._append(fd, b"".join(_dumps({"done": r.seq, "member": member_serial})
                                      for r in recs), lines=len(recs))
            for r in recs:
                self._drop(r, member_serial)
            self._maybe_compact()
            return len(recs)

    def forget_member(self, serial: str) -> int:
        """The member left the group: it no longer waits for any change.
        Returns how many entries named it (0: nothing is written)."""
        with self._locked() as fd:
            recs = [r for r in self._recs.values() if serial in r.pending]
            if not recs:
                return 0
            self._append(fd, _dumps({"forget": serial}))
            for r in recs:
                self._drop(r, serial)
            self._maybe_compact()
            return len(recs)

    def explains(self, key: IdentKey | Mapping[Any, Any]) -> Entry | None:
        """The latest live entry about identity ``key`` (an
        :func:`~hacli.engine.replication.ident_key`, or the identity dict).

        For synchronisation: an object one member has and another lacks is
        copied across unless a live entry explains it: a ``destroy`` means
        "destroyed on purpose while the members in ``pending`` were down:
        destroy it there, do not copy it back".  A ``set`` entry is about the
        identity before and after the change (a relabel changes the identity).
        """
        k = _ident_key(key) if isinstance(key, Mapping) else key
        with self._locked():
            for r in reversed(self._recs.values()):
                if k in r.keys:
                    return r.snapshot()
            return None

    def explained_keys(self) -> frozenset[IdentKey]:
        """Every identity some live entry is about (:meth:`explains` for a whole
        inventory at once: one read of the file, not one per object)."""
        with self._locked():
            return frozenset(k for r in self._recs.values() for k in r.keys)

    def compact(self) -> bool:
        """Rewrite the file with the live entries only, if anything is stale.
        (Done by itself when stale lines outnumber live entries past
        :data:`COMPACT_THRESHOLD`.)  Returns True when it rewrote."""
        with self._locked():
            if self._body == len(self._recs):
                return False
            self._compact()
            return True

    # -- internals (both locks held) ---------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[int]:
        """Both locks, the journal open (read/append) and brought up to date."""
        with self._lock:
            try:
                self._flock.acquire(timeout=self._timeout, poll_interval=_POLL)
            except filelock.Timeout as e:
                raise JournalError(f"{self._path}: another process has held the journal lock "
                                   f"for more than {self._timeout:g} s") from e
            try:
                fd = self._open()
                try:
                    self._refresh(fd)
                    yield fd
                finally:
                    os.close(fd)
            except OSError as e:
                self._head = b""  # reread everything next time
                raise JournalError(f"{self._path}: {e.strerror or e}") from e
            finally:
                self._flock.release()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(self._path, flags)
        except FileNotFoundError:
            self._create()
            fd = os.open(self._path, flags)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise JournalError(f"{self._path}: not a regular file")
        if stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return fd

    def _header(self) -> bytes:
        return _dumps({"journal": FORMAT, "gen": secrets.token_hex(8), "group": self._group,
                       "last_seq": self._last_seq})

    def _write_new(self, lines: list[bytes], *, replace: bool) -> None:
        """Put a complete file in place atomically: temp file, fsync, rename
        (or link, which never replaces another process's new journal), fsync
        of the directory."""
        d = self._path.parent
        tmp = d / f".{self._path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, b"".join(lines))
                os.fsync(fd)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, self._path)
            else:
                with suppress(FileExistsError):
                    os.link(tmp, self._path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(d)

    def _create(self) -> None:
        # the file never exists without its header (a generation to compare)
        self._write_new([self._header()], replace=False)

    def _remove_stale_temps(self) -> None:
        # temp files exist only while their writer holds the lock, which we hold
        for p in self._path.parent.glob(f".{self._path.name}.*.tmp"):
            p.unlink(missing_ok=True)

    def _reset(self) -> None:
        self._head = b""
        self._offset = self._lineno = self._body = self._prev_seq = 0
        self._last_seq = 0
        self._recs = {}

    def _refresh(self, fd: int) -> None:
        """Read what other processes appended, or everything again when the
        file is another generation (compacted or recreated by another process)."""
        size = os.fstat(fd).st_size
        same = (bool(self._head) and size >= self._offset
                and _pread_all(fd, len(self._head), 0) == self._head)
        if not same:
            self._reset()
            if size == 0:  # made by someone else without a header: give it one
                self._head = self._header()
                _write_all(fd, self._head)
                os.fsync(fd)
                self._offset, self._lineno = len(self._head), 1
                return
        if size > self._offset:
            self._read(fd, size)

    def _read(self, fd: int, size: int) -> None:
        data = _pread_all(fd, size - self._offset, self._offset)
        parts = data.split(b"\n")
        tail = parts.pop()  # b"" when the data ends with a newline
        pos = self._offset
        for i, raw in enumerate(parts):
            obj = _parse(raw)
            if obj is None:
                if i == len(parts) - 1 and not tail:
                    self._cut(fd, pos)  # torn last line
                    return
                raise JournalCorrupt(self._path, self._lineno + 1, "unreadable line")
            self._apply(obj, raw)
            pos += len(raw) + 1
            self._offset = pos
        if tail:
            obj = _parse(tail)
            if obj is None:
                self._cut(fd, pos)  # torn last line
                return
            # complete but for its newline: the change happened; keep it
            self._apply(obj, tail)
            _write_all(fd, b"\n")
            os.fsync(fd)
            self._offset = pos + len(tail) + 1

    def _cut(self, fd: int, pos: int) -> None:
        os.ftruncate(fd, pos)
        os.fsync(fd)
        self._offset = pos
        if pos == 0:  # the header itself was torn: start the file again
            self._refresh(fd)

    def _apply(self, obj: Any, raw: bytes) -> None:
        """Apply one parsed line (the next one) to the in-memory state."""
        lineno = self._lineno + 1
        if not isinstance(obj, dict):
            raise JournalCorrupt(self._path, lineno, "not a JSON object")
        if lineno == 1:
            version = obj.get("journal")
            if isinstance(version, bool) or not isinstance(version, int):
                raise JournalCorrupt(self._path, lineno, "no journal header")
            if version > FORMAT:
                raise JournalError(f"{self._path}: journal format {version} is from a newer "
                                   "hacli; not touched")
            last = obj.get("last_seq", 0)
            if isinstance(last, bool) or not isinstance(last, int) or last < 0:
                raise JournalCorrupt(self._path, lineno, "bad header")
            self._head = raw + b"\n"
            self._last_seq = max(self._last_seq, last)
        elif "seq" in obj:
            try:
                rec = _rec_from(obj)
            except (KeyError, ValueError, TypeError) as e:
                raise JournalCorrupt(self._path, lineno, f"bad entry: {e}") from None
            if rec.seq <= self._prev_seq:
                raise JournalCorrupt(self._path, lineno, "sequence number not increasing")
            self._prev_seq = rec.seq
            self._last_seq = max(self._last_seq, rec.seq)
            self._body += 1
            if rec.pending:
                self._recs[rec.seq] = rec
        elif "done" in obj:
            seq, member = obj.get("done"), obj.get("member")
            if not isinstance(seq, int) or not isinstance(member, str):
                raise JournalCorrupt(self._path, lineno, "bad delivery line")
            self._body += 1
            r = self._recs.get(seq)
            if r is not None and member in r.pending:
                self._drop(r, member)
        elif "forget" in obj:
            member = obj.get("forget")
            if not isinstance(member, str):
                raise JournalCorrupt(self._path, lineno, "bad forget line")
            self._body += 1
            for r in [r for r in self._recs.values() if member in r.pending]:
                self._drop(r, member)
        else:
            raise JournalCorrupt(self._path, lineno, "unknown line")
        self._lineno = lineno

    def _drop(self, rec: _Rec, member: str) -> None:
        rec.pending.discard(member)
        if not rec.pending:
            del self._recs[rec.seq]

    def _append(self, fd: int, line: bytes, lines: int = 1) -> None:
        """Append one line (or ``lines`` lines) and fsync; on failure cut the file
        back so no half line is left for the next append to run into."""
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, self._offset)
                os.fsync(fd)
            except OSError:
                pass
            raise
        self._offset += len(line)
        self._lineno += lines
        self._body += lines

    def _maybe_compact(self) -> None:
        stale = self._body - len(self._recs)
        if stale > len(self._recs) and stale > self._threshold:
            self._compact()

    def _compact(self) -> None:
        head = self._header()
        lines = [head] + [r.line() for r in self._recs.values()]
        self._write_new(lines, replace=True)
        self._head = head
        self._offset = sum(len(b) for b in lines)
        self._lineno = len(lines)
        self._body = len(self._recs)
        self._prev_seq = max(self._recs, default=0)


def _parse(raw: bytes) -> Any | None:
    """The JSON value of a line, or None when it is not JSON at all."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


__all__ = [
    "COMPACT_THRESHOLD",
    "FORMAT",
    "KINDS",
    "PRIVATE_VALUE_ATTRS",
    "ChangeJournal",
    "Entry",
    "IdentKey",
    "JournalCorrupt",
    "JournalError",
    "journal_dir",
    "refuse_key_material",
    "state_home",
]
