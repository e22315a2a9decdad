"""Reading, safely writing, locking and finding configuration files.

``save`` never leaves a half-written file: it writes a temporary sibling, syncs
it, renames it over the original (atomic on POSIX) and syncs the directory.  A
process killed in the middle leaves either the old or the new file, plus at
worst a stray temporary named ``.<name>.hacli-<pid>-<random>.tmp``; discovery
only ever looks at exact file names, so it is never taken for the
configuration, and the next ``save`` to that directory deletes strays whose
process is gone.

``edit`` adds a lock so concurrent read-modify-write cycles from several hacli
processes do not lose each other's changes.  The lock is ``flock(2)`` on the
configuration file itself (:func:`locked`), not on a lock file beside it: a lock
file would stay behind after every write (even a refused one), and removing it
after use is not safe, because a process already waiting on the removed file's
lock would then hold a lock that nobody else takes, while a third process locks
a new file of the same name.  Locking the file has the same trap, since
``save`` replaces the file by a rename: so the holder checks, once it has the
lock, that the file it locked is still the one at the path, and starts again
when it is not.  The kernel drops the lock when the process dies, so a killed
writer never leaves the file locked.

A file or directory whose permission bits grant write access to nobody is
treated as read-only even for root: an administrator who ran ``chmod a-w`` on a
configuration meant it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from hacli.conf.document import Document
from hacli.errors import ConfIOError, ConfNotFoundError

#: The system-wide Luna client configuration (a module constant so tests can replace it).
SYSTEM_CONF = Path("/etc/Chrystoki.conf")
#: Luna's variable naming the *directory* that holds Chrystoki.conf / crystoki.ini.
ENV_CONF_DIR = "ChrystokiConfigurationPath"
#: How long ``edit`` waits for another process's lock before giving up (seconds).
LOCK_TIMEOUT = 30.0
#: How often a waiting writer tries the lock again (seconds).  The same short
#: pause for every waiter: a pause that grew with the wait made the longest
#: waiters the least likely to catch the lock free, and under 16 concurrent
#: writers on a loaded machine two waited out the whole timeout (configuration
#: soak finding).
_LOCK_POLL = 0.005

_TMP_SUFFIX = ".tmp"


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def load(path: str | os.PathLike[str]) -> Document:
    """Read and parse ``path``.

    Raises :class:`~hacli.errors.ConfIOError` if it cannot be read and
    :class:`~hacli.errors.ConfParseError` (carrying the path) if it is malformed.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfIOError(f"cannot read {os.fspath(path)}: {_reason(e)}") from None
    return Document.parse(data, os.fspath(path))


def save(doc: Document, path: str | os.PathLike[str]) -> None:
    """Atomically replace ``path`` (following symlinks) with ``doc.dumps()``
    (see :func:`write_atomic`)."""
    write_atomic(path, doc.dumps())


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically replace ``path`` (following symlinks) with ``data``: the one
    safe writer, for configuration files and the one-shot commands' ``--out``.

    Mode and ownership of an existing file are kept; a new file gets 0666 minus
    the umask.  Raises :class:`~hacli.errors.ConfIOError` for a read-only file
    or directory, leaving the original untouched and no temporary behind.
    """
    target = Path(os.path.realpath(path))
    directory = target.parent
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise ConfIOError(f"cannot write {os.fspath(path)}: {_reason(e)}") from None
    if old is not None and (not stat.S_ISREG(old.st_mode) or _read_only(target, old)):
        what = "not a regular file" if not stat.S_ISREG(old.st_mode) else "read-only"
        raise ConfIOError(f"cannot write {os.fspath(path)}: {what}")
    _check_dir_writable(directory, path)
    _remove_stale_temps(directory, target.name)

    tmp = directory / f".{target.name}.hacli-{os.getpid()}-{os.urandom(4).hex()}{_TMP_SUFFIX}"
    try:
        # O_EXCL: never follow or reuse something already there; 0o666 lets the
        # kernel apply the umask for new files.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise ConfIOError(f"cannot write {os.fspath(path)}: {_reason(e)}") from None
    try:
        try:
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    # Only root (or a member of the group) can do this; an ordinary
                    # user who may write the directory still gets the edit made.
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, old.st_uid, old.st_gid)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfIOError(f"cannot write {os.fspath(path)}: {_reason(e)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def edit(path: str | os.PathLike[str]) -> Iterator[Document]:
    """Lock, load, yield the document, save it if it changed, unlock.

    Every hacli process editing the (symlink-resolved) file takes turns
    (:func:`locked`).  If the block raises, nothing is written.  No file is
    left beside the configuration, whatever happens.
    """
    target = Path(os.path.realpath(path))
    _check_dir_writable(target.parent, path)
    with locked(path):
        doc = load(path)
        before = doc.dumps()
        yield doc
        if doc.dumps() != before:
            save(doc, path)


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], timeout: float | None = None) -> Iterator[None]:
    """Hold the write lock of a configuration file (``flock`` on the file itself).

    Waits up to ``timeout`` (default :data:`LOCK_TIMEOUT`) seconds for another
    writer, then raises :class:`~hacli.errors.ConfIOError`.  Readers need no
    lock: ``save`` replaces the file in one rename.  Also removes the
    ``.<name>.lock`` file that hacli versions before this lock left beside it.
    """
    target = Path(os.path.realpath(path))
    wait = LOCK_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise ConfIOError(f"cannot read {os.fspath(path)}: {_reason(e)}") from None
        try:
            _flock(fd, deadline, f"{os.fspath(path)} is locked by another process "
                                 f"(waited {wait:g} s)")
            if _same_file(fd, target):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # another writer replaced the file while we waited: lock the new one
    try:
        # An older hacli still running may hold it; it then excludes only its peers,
        # as before, and nothing of this version relies on the file.
        with contextlib.suppress(OSError):
            os.unlink(legacy_lock_file(target))
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def legacy_lock_file(path: str | os.PathLike[str]) -> Path:
    """``.<name>.lock`` beside the file, which earlier hacli versions locked and left."""
    target = Path(os.path.realpath(path))
    return target.parent / f".{target.name}.lock"


def _flock(fd: int, deadline: float, busy: str) -> None:
    """Take the exclusive lock, trying again until ``deadline`` (time.monotonic);
    ConfIOError(``busy``) then."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as e:
            raise ConfIOError(f"cannot lock the file: {_reason(e)}") from None
        if time.monotonic() >= deadline:
            raise ConfIOError(busy)
        time.sleep(_LOCK_POLL)  # flock has no timeout of its own


def _same_file(fd: int, target: Path) -> bool:
    try:
        now = os.stat(target)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def default_lab_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_DATA_HOME/hacli/lab``, or ``~/.local/share/hacli/lab``."""
    data_home = environ.get("XDG_DATA_HOME", "")
    # The XDG spec says to ignore a relative value.
    if not os.path.isabs(data_home):
        home = environ.get("HOME") or os.path.expanduser("~")
        data_home = os.path.join(home, ".local", "share")
    return Path(data_home) / "hacli" / "lab"


def discover(
    explicit: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
    *,
    system_conf: Path | None = None,
) -> Path:
    """Find the configuration file to use; the first that exists wins.

    Order: ``explicit`` (``--conf``; must exist); ``$ChrystokiConfigurationPath``
    (a directory) with ``Chrystoki.conf`` then ``crystoki.ini``;
    ``/etc/Chrystoki.conf`` (``system_conf``, default :data:`SYSTEM_CONF`); the
    lab's ``Chrystoki.conf``.  Raises :class:`~hacli.errors.ConfNotFoundError`
    listing every place looked.
    """
    if explicit is not None:
        p = Path(explicit)
        if p.is_dir():
            raise ConfNotFoundError(f"{os.fspath(p)} is a directory, not a configuration file")
        if not p.exists():
            raise ConfNotFoundError(f"configuration file {os.fspath(p)} does not exist")
        return p

    looked: list[str] = []
    candidates: list[Path] = []
    conf_dir = environ.get(ENV_CONF_DIR, "")
    if conf_dir:
        candidates += [Path(conf_dir) / "Chrystoki.conf", Path(conf_dir) / "crystoki.ini"]
    else:
        looked.append(f"${ENV_CONF_DIR} (not set)")
    candidates += [system_conf or SYSTEM_CONF, default_lab_dir(environ) / "Chrystoki.conf"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        looked.append(os.fspath(candidate))
    raise ConfNotFoundError(
        "no configuration file found (looked at "
        + ", ".join(looked)
        + "); use --conf PATH, or 'hacli lab up' to create a lab"
    )


# -- helpers -----------------------------------------------------------------------


def _read_only(p: Path, st: os.stat_result) -> bool:
    return stat.S_IMODE(st.st_mode) & 0o222 == 0 or not os.access(p, os.W_OK)


def _check_dir_writable(directory: Path, path: str | os.PathLike[str]) -> None:
    try:
        st = os.stat(directory)
    except OSError as e:
        raise ConfIOError(f"cannot write {os.fspath(path)}: {_reason(e)}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfIOError(f"cannot write {os.fspath(path)}: {directory} is not a directory")
    if _read_only(directory, st):
        raise ConfIOError(f"cannot write {os.fspath(path)}: directory {directory} is read-only")


def _remove_stale_temps(directory: Path, name: str) -> None:
    """Delete temporaries left by killed savers (their pid no longer exists)."""
    pattern = re.compile(re.escape(f".{name}.hacli-") + r"(\d+)-[0-9a-f]+" + re.escape(_TMP_SUFFIX))
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and not _alive(int(m[1])):
            with contextlib.suppress(OSError):
                os.unlink(directory / entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some file systems refuse fsync on a directory.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
