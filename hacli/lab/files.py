"""Writing the lab's files: atomic replacement, PIN files that are never readable by others.

:func:`hacli.conf.store.save` is the atomic writer for configuration
*documents* (it keeps an edited file's mode and owner, and speaks
ConfIOError); the lab writes files it owns, with a mode it chooses, so it has
this smaller one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable, not only the new file's contents.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str, mode: int) -> None:
    """Write *data* to *path* so that readers see the old file or the new one.

    The temporary file is created with *mode* already (``os.open``), so a
    0600 file is never readable by others, not even for a moment.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_secret(path: Path, secret: str) -> None:
    """Create a 0600 file holding *secret* (no trailing newline); fails if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and never wider
        os.write(fd, secret.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def remove(path: Path, ignore_errors: bool = False) -> None:
    """Delete a file or a whole directory tree; a missing file is not an error.

    *ignore_errors* (for a rollback, which must not hide the error that caused
    it) leaves what cannot be removed of a directory tree in place.
    """
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=ignore_errors)
    else:
        path.unlink(missing_ok=True)
