"""PKCS#11 module instances, each with its own worker thread and command timeout.

Facts this module is built on (BRIEF section 4):

* SoftHSM2 turns its locking off under python-pkcs11, so every call into one
  loaded module must be serialised.  Here each :class:`ModuleInstance` owns one
  worker thread and *every* call into the module runs on it: serialisation
  without a lock that a stuck call could hold.
* A frozen member blocks a call forever.  The caller waits for its task with
  the command timeout, measured from the moment the task (or the task ahead of
  it) started running, so a queue behind a slow but working member is not
  mistaken for a hang.  On timeout the instance is *abandoned*: it never takes
  another task, and whoever needs the member again gets a brand-new instance
  (a fresh copy of the library file).
* An abandoned instance's stuck call is freed by cutting its transport: for
  ``p11-kit-client.so`` the process's unix socket(s) connected to the member's
  server (``P11_KIT_SERVER_ADDRESS``), recorded when the module connects in
  ``C_Initialize``, are ``shutdown(SHUT_RDWR)`` (never closed: the fd stays
  the C library's).  The stuck call then fails with ``DeviceError`` within a
  millisecond; the worker ends the instance's multi-part helpers (their
  ``C_xFinal`` fails as fast), finalizes the module and exits.  A module whose
  transport cannot be cut (SoftHSM2 loaded directly, which never hangs) keeps
  its worker until the call returns.
* A loaded module copy is **never unloaded** (``dlclose``): python-pkcs11's
  objects hold raw pointers into it, and its operation contexts call it from
  their finalizers on whatever thread drops them last.  Every successfully
  initialised ``pkcs11.lib`` is kept for the life of the process (a reference
  nobody releases, so not even the interpreter's shutdown frees it);
  ``C_Finalize`` runs when the instance closes, after its helpers have ended,
  so its connection and sessions still go away.  The file copy is deleted as
  soon as it is mapped.
* python-pkcs11 reports failures of that clean-up (``Exception ignored in
  'pkcs11._pkcs11.OperationContext.__del__'``) through ``sys.unraisablehook``
  and, from Cython, ``sys.excepthook``: filters installed once (chaining to
  the hooks found) drop exactly the python-pkcs11 errors whose every frame is
  python-pkcs11's own; the application's own reports pass.  Exceptions of
  module calls have their frames' locals dropped on the worker, so objects
  they held (an operation left active by a failed ``C_FindObjectsInit``) are
  cleaned up there, in order with the instance's other calls.
* ``pkcs11.lib(path)`` caches one instance per path and the loader returns one
  instance per file, so every instance here loads its own private copy of the
  library (never the cache), which also keeps the engine independent of other
  users of the same module in the process.
* ``p11-kit-client.so`` reads ``P11_KIT_SERVER_ADDRESS`` when loaded; SoftHSM2
  reads ``SOFTHSM2_CONF`` in ``C_Initialize``.  The member's environment is put
  in ``os.environ`` around both, under :data:`ENV_GATE`, a process-wide lock
  with a *lease*: a holder blocked inside ``C_Initialize`` (a frozen p11-kit
  server) is overtaken after :data:`ENV_LEASE` seconds, long after the module
  has read its variables, so one frozen member cannot stall the others.
* Work directories (:func:`make_workdir`, or any ``hacli-engine-*`` /
  ``hacli-provision-*`` directory an :class:`InstanceRegistry` is given) carry
  their owner's pid and start time; they are removed when the registry
  closes, at interpreter exit, and otherwise (a crash) by the next registry
  started in the same parent directory once the owner is gone.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import functools
import inspect
import os
import queue
import re
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import pkcs11
from pkcs11 import _pkcs11

from hacli.engine.exceptions import CallTimeout, MemberBusy, ModuleUnavailable
from hacli.engine.watchdog import PERIOD, Watchdog

if TYPE_CHECKING:
    from hacli.engine.multipart import StepDriver

T = TypeVar("T")

#: Seconds an environment window may be held before another loader overtakes it.
ENV_LEASE = 0.5


class _EnvGate:
    """Process-wide gate for temporary ``os.environ`` changes (see module doc)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: _EnvLease | None = None

    def enter(self, env: Mapping[str, str], lease: float = ENV_LEASE) -> _EnvLease:
        with self._cond:
            while self._holder is not None:
                wait = self._holder.deadline - time.monotonic()
                if wait <= 0:
                    self._holder._restore_locked()
                    self._holder = None
                    break
                self._cond.wait(wait)
            token = _EnvLease(self, env, time.monotonic() + lease)
            self._holder = token
            return token

    def _exit(self, token: _EnvLease) -> None:
        with self._cond:
            if self._holder is token:
                token._restore_locked()
                self._holder = None
                self._cond.notify_all()


class _EnvLease:
    def __init__(self, gate: _EnvGate, env: Mapping[str, str], deadline: float):
        self.gate = gate
        self.deadline = deadline
        self._saved = {k: os.environ.get(k) for k in env}
        self._restored = False
        os.environ.update(env)

    def _restore_locked(self) -> None:
        if self._restored:
            return
        self._restored = True
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __enter__(self) -> _EnvLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate._exit(self)


ENV_GATE = _EnvGate()

#: Seconds the worker gives each multi-part helper to end (``C_xFinal``) when
#: the instance closes, re-initialises or was abandoned.
HELPER_TIMEOUT = 2.0
#: Seconds an abandoned instance's transport is cut again and again while its
#: worker is still inside the module (p11-kit-client reconnects within
#: ``C_Initialize`` after a failed connection).
CUT_LIMIT = 10.0

# Instances whose worker is stuck inside the module (kept until it returns).
_GRAVEYARD: set[ModuleInstance] = set()
_GRAVEYARD_LOCK = threading.Lock()

class _Local(threading.local):
    """Per thread: the instance whose worker it is, and the lane of the call
    it is making into a module (class attributes are the defaults)."""

    instance: ModuleInstance | None = None
    #: index of the lane the running call holds (0 outside calls, and on workers)
    lane: int = 0


_LOCAL = _Local()
#: The per-thread state above, for code that reads the lane on every call
#: (``lane_local.lane`` costs no function call; :func:`lane_index` is the same).
lane_local = _LOCAL


def current_instance() -> ModuleInstance | None:
    """The instance whose worker thread runs the caller; None on any other thread."""
    return _LOCAL.instance


def lane_index() -> int:
    """The lane (see :class:`ModuleInstance`) of the call this thread is making
    into a module: which work session of a member connection it uses.  0 outside
    calls, and on a worker thread (a worker runs with every lane held)."""
    return _LOCAL.lane


# ---------------------------------------------------------------------------
# loaded modules are kept for the life of the process

_KEPT: list[Any] = []
_KEPT_LOCK = threading.Lock()


def _keep_forever(lib: Any) -> None:
    """Never let ``lib`` be deallocated (its ``__dealloc__`` would ``dlclose``
    the module under python-pkcs11 objects that still point into it)."""
    with _KEPT_LOCK:
        _KEPT.append(lib)
    # a reference nobody owns: survives the clearing of module globals at exit
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(lib))


def kept_libraries() -> int:
    """How many module copies this process has loaded and keeps mapped."""
    with _KEPT_LOCK:
        return len(_KEPT)


# Finalized copies no thread uses any more, per module key, for the next
# instance of the same module to initialise again instead of mapping a new
# copy (p11-kit-client read its server address at load: same key, same address).
_POOL: dict[Any, list[Any]] = {}


def _pool_put(key: Any, lib: Any) -> None:
    if lib.initialized:  # never hand on a module that is still initialised
        return
    with _KEPT_LOCK:
        _POOL.setdefault(key, []).append(lib)


def _pool_take(key: Any) -> Any:
    with _KEPT_LOCK:
        libs = _POOL.get(key)
        return libs.pop() if libs else None


def pooled_libraries() -> int:
    """How many of the kept copies are finalized and free for reuse."""
    with _KEPT_LOCK:
        return sum(len(v) for v in _POOL.values())


# ---------------------------------------------------------------------------
# python-pkcs11's clean-up errors stay off the application's stderr

_PKCS11_DIR = os.path.dirname(os.path.abspath(pkcs11.__file__)) + os.sep


def from_pkcs11_cleanup(exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None, *, _dir: str = _PKCS11_DIR) -> bool:
    """True for an error raised by python-pkcs11's own clean-up: an Exception
    whose traceback has only python-pkcs11 frames (a finalizer's ``C_xFinal``
    into a dead connection, a search closed on another thread).  Anything the
    application runs has a frame of its own in the traceback, so its reports
    are never matched."""
    if exc_type is None or not issubclass(exc_type, Exception) or tb is None:
        return False
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not (name.startswith("pkcs11/") or name.startswith(_dir)):
            return False
        tb = tb.tb_next
    return True


_HOOKS_LOCK = threading.Lock()


def install_quiet_hooks() -> None:
    """Filter python-pkcs11's clean-up errors out of ``sys.unraisablehook`` and
    ``sys.excepthook`` (Cython prints a finalizer's error through both), once
    per process, chaining everything else to the hooks in place."""
    with _HOOKS_LOCK:
        if not getattr(sys.unraisablehook, "_hacli_quiet", False):
            prev_unraisable = sys.unraisablehook

            def unraisablehook(u: Any, _prev: Any = prev_unraisable,
                               _test: Any = from_pkcs11_cleanup) -> None:
                try:
                    if _test(u.exc_type, u.exc_value, u.exc_traceback):
                        return
                except Exception:
                    pass
                _prev(u)

            unraisablehook._hacli_quiet = True  # type: ignore[attr-defined]
            sys.unraisablehook = unraisablehook
        if not getattr(sys.excepthook, "_hacli_quiet", False):
            prev_except = sys.excepthook

            def excepthook(t: Any, v: Any, tb: Any, _prev: Any = prev_except,
                           _test: Any = from_pkcs11_cleanup) -> None:
                try:
                    if _test(t, v, tb):
                        return
                except Exception:
                    pass
                _prev(t, v, tb)

            excepthook._hacli_quiet = True  # type: ignore[attr-defined]
            sys.excepthook = excepthook


_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _drop_locals(exc: BaseException) -> None:
    """Clear the locals of the finished frames ``exc`` (and its causes) passed
    through, so python-pkcs11 objects they held are freed now, on the worker,
    rather than wherever the exception is dropped.  Generator frames are left."""
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if not frame.f_code.co_flags & _GENERATOR_FLAGS:
                with contextlib.suppress(RuntimeError):  # still executing
                    frame.clear()
            tb = tb.tb_next
        stack += [e.__cause__, e.__context__]


# ---------------------------------------------------------------------------
# the transport of p11-kit-client: unix sockets to the member's server

#: A ``p11-kit-client.so`` built by hacli (packaging/p11-kit) has this file
#: next to it, one fix it carries per line.
CLIENT_FIXES_FILE = "hacli-fixes"
#: The fix without which calls must not share a p11-kit-client connection:
#: upstream's client (0.24.1 to 0.26.x) leaves a thread waiting for good when a
#: read fails while another call's answer header is pending (docs/engine.md).
READ_FIX = "rpc-read-failure-wakes-waiters"


@functools.lru_cache(maxsize=32)
def shares_connections_safely(library: str) -> bool:
    """Whether several calls may run at once on one connection of ``library``:
    only a ``p11-kit-client.so`` that carries hacli's read fix (its
    :data:`CLIENT_FIXES_FILE` names :data:`READ_FIX`)."""
    real = os.path.realpath(library)
    try:
        with open(os.path.join(os.path.dirname(real), CLIENT_FIXES_FILE)) as f:
            return READ_FIX in (line.strip() for line in f)
    except OSError:
        return False


def server_socket_path(env: Mapping[str, str] | None) -> str | None:
    """The unix socket path of ``P11_KIT_SERVER_ADDRESS`` in ``env``, if any."""
    addr = (env or {}).get("P11_KIT_SERVER_ADDRESS", "")
    if not addr.startswith("unix:"):
        return None
    for part in addr[len("unix:"):].split(","):
        key, _, value = part.partition("=")
        if key.strip() == "path" and value:
            return urllib.parse.unquote(value)
    return None


def _socket_inodes() -> dict[int, int]:
    """inode -> fd of every socket of this process."""
    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            out[int(link[8:-1])] = int(n)
    return out


def _borrow(fd: int, inode: int) -> socket.socket | None:
    """A socket object on a *duplicate* of ``fd`` if it still is socket
    ``inode`` (closing it never closes the module's own descriptor)."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        if os.fstat(dup).st_ino == inode:
            return socket.socket(fileno=dup)
    except OSError:
        pass
    os.close(dup)
    return None


def _peer_path(sock: socket.socket) -> str | None:
    if sock.family != socket.AF_UNIX:
        return None
    try:
        peer = sock.getpeername()
    except OSError:
        return None
    return peer if isinstance(peer, str) else None


def _peer_pid(sockets: Mapping[int, int]) -> int | None:
    """The pid of the process at the other end of the first of these sockets
    (inode -> fd) that tells (``SO_PEERCRED``: the server that listened); None
    if none does."""
    for ino, fd in sockets.items():
        sock = _borrow(fd, ino)
        if sock is None:
            continue
        with sock, contextlib.suppress(OSError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            if pid > 0:
                return int(pid)
    return None


def _sockets_to(path: str, inodes: Iterable[int] | None = None) -> dict[int, int]:
    """inode -> fd of this process's unix sockets connected to ``path``
    (only among ``inodes`` when given)."""
    wanted = None if inodes is None else set(inodes)
    out: dict[int, int] = {}
    for ino, fd in _socket_inodes().items():
        if wanted is not None and ino not in wanted:
            continue
        sock = _borrow(fd, ino)
        if sock is None:
            continue
        with sock:
            if _peer_path(sock) == path:
                out[ino] = fd
    return out


# socket inode -> number of the instance that connected it
_SOCKET_OWNERS: dict[int, int] = {}
# instance number -> (server path, the process's sockets when it began to
# connect) while a (re)initialisation is running: a socket made since then may
# be that instance's, so another instance's cutting leaves it alone
_CONNECTING: dict[int, tuple[str, frozenset[int]]] = {}
_SOCKET_LOCK = threading.Lock()


# ---------------------------------------------------------------------------
# work directories

#: Name prefixes of the engine's work directories (followed by ``PID-``).
WORKDIR_PREFIXES = ("hacli-engine-", "hacli-provision-")
#: File in a work directory naming its owner: ``"PID STARTTIME"``.
OWNER_FILE = "owner"
#: A work directory of an older hacli (no owner recorded) is left alone this
#: many seconds after its last change, and while any process maps a file in it.
LEGACY_GRACE = 60.0

_OWNER_NAME = re.compile("(?:" + "|".join(map(re.escape, WORKDIR_PREFIXES)) + r")(\d+)-")
_CLAIMED: set[str] = set()
_CLAIMED_LOCK = threading.Lock()
_ATEXIT_REGISTERED = False


def process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` (clock ticks after boot), None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _read_owner(path: str) -> tuple[int, int | None] | None:
    try:
        with open(os.path.join(path, OWNER_FILE)) as f:
            fields = f.read().split()
        return int(fields[0]), (int(fields[1]) if len(fields) > 1 else None)
    except (OSError, IndexError, ValueError):
        return None


def _mapped_under(parent: str) -> set[str] | None:
    """Names of the directories in ``parent`` holding a file that a process we
    can see maps (None when /proc cannot be read)."""
    prefix = parent.rstrip("/") + "/"
    try:
        pids = [n for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return None
    names: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    at = line.find(prefix)
                    if at >= 0:
                        names.add(line[at + len(prefix):].split("/", 1)[0])
        except OSError:
            continue
    return names


class _Mapped:
    """:func:`_mapped_under`, computed once and only if needed."""

    def __init__(self, parent: str):
        self.parent = parent
        self._names: set[str] | None = None
        self._done = False

    def __contains__(self, name: object) -> bool:
        if not self._done:
            self._names, self._done = _mapped_under(self.parent), True
        return self._names is None or name in self._names


def _is_stale(path: str, name: str, mtime: float, mapped: _Mapped) -> bool:
    owner = _read_owner(path)
    if owner is not None:
        pid, start = owner
        now = process_start_time(pid)
        return now is None or (start is not None and now != start)
    m = _OWNER_NAME.match(name)
    if m:  # named by its owner, the owner file not written yet (or lost)
        return process_start_time(int(m.group(1))) is None
    # an older hacli's: its copies are mapped while it runs
    return time.time() - mtime >= LEGACY_GRACE and name not in mapped


def remove_stale_workdirs(parent: str | None = None) -> list[str]:
    """Remove this user's work directories in ``parent`` (default: the temp
    directory) whose owning process is gone; returns their paths."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    uid = os.getuid()
    mapped = _Mapped(os.path.abspath(parent))
    for entry in entries:
        if not entry.name.startswith(WORKDIR_PREFIXES):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != uid or not _is_stale(entry.path, entry.name, st.st_mtime, mapped):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.exists(entry.path):
            removed.append(entry.path)
    return removed


def _remove_claimed_at_exit() -> None:
    with _CLAIMED_LOCK:
        paths = list(_CLAIMED)
    for path in paths:
        owner = _read_owner(path)
        if owner is None or owner[0] == os.getpid():  # never a forked parent's
            shutil.rmtree(path, ignore_errors=True)


def claim_workdir(path: str) -> bool:
    """Record this process as the owner of work directory ``path`` (pid and
    start time in its owner file) and remove it at interpreter exit.

    Only directories named like the engine's (:data:`WORKDIR_PREFIXES`) are
    claimed; returns whether ``path`` is claimed by this process.
    """
    global _ATEXIT_REGISTERED
    path = os.path.abspath(path)
    if not os.path.basename(path).startswith(WORKDIR_PREFIXES) or not os.path.isdir(path):
        return False
    pid = os.getpid()
    owner = _read_owner(path)
    if owner is not None and owner[0] != pid:
        return False
    if owner is None:
        tmp = os.path.join(path, f".{OWNER_FILE}.{pid}")
        with open(tmp, "w") as f:
            f.write(f"{pid} {process_start_time(pid) or 0}\n")
        os.replace(tmp, os.path.join(path, OWNER_FILE))
    with _CLAIMED_LOCK:
        _CLAIMED.add(path)
        if not _ATEXIT_REGISTERED:
            atexit.register(_remove_claimed_at_exit)
            _ATEXIT_REGISTERED = True
    return True


def make_workdir(prefix: str = "hacli-engine-", parent: str | None = None) -> str:
    """A new work directory ``<parent>/<prefix><pid>-XXXXXXXX`` owned by this
    process (see :func:`claim_workdir`), after removing stale ones in ``parent``."""
    parent = parent or tempfile.gettempdir()
    remove_stale_workdirs(parent)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    claim_workdir(path)
    return path


def remove_workdir(path: str) -> None:
    """Remove a work directory (idempotent) and forget it."""
    path = os.path.abspath(path)
    shutil.rmtree(path, ignore_errors=True)
    with _CLAIMED_LOCK:
        _CLAIMED.discard(path)


# ---------------------------------------------------------------------------
# module instances

class _Task:
    __slots__ = ("args", "fn", "future", "started")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]):
        self.fn = fn
        self.args = args
        self.future: Future[Any] = Future()
        self.started: float | None = None


class _Lane:
    """One of a module instance's call slots: a call holds one while it runs,
    and publishes its deadlines on it for the watchdog (attribute writes on
    an object made once, no allocation per call)."""

    __slots__ = ("deadline", "hard_deadline", "index", "spared")

    def __init__(self, index: int):
        self.index = index
        #: monotonic deadline of the call running on this lane (read by the watchdog)
        self.deadline: float | None = None
        #: the member's whole command timeout, for a call given less (a
        #: failover retry): past ``deadline`` the call is cut only if the
        #: member's server is seen stopped, else at this one
        self.hard_deadline: float | None = None
        #: the ``deadline`` the watchdog found past with the server running
        #: (watchdog thread only)
        self.spared: float | None = None

    def __repr__(self) -> str:
        return f"<lane {self.index} {'busy' if self.deadline is not None else 'idle'}>"


_STOP = object()
#: Wakes an idle worker after its instance was abandoned (it then finalizes).
_WAKE = object()


class ModuleInstance:
    """One loaded copy of a PKCS#11 module, with its call lanes and worker thread.

    Two ways to call it (docs/engine.md, "Calls into a member"):

    * **direct** (a module whose transport can be cut, ``p11-kit-client.so``,
      with a ``watchdog``): :meth:`call` runs on the caller's thread holding
      one of the instance's ``concurrency`` *lanes*.  ``p11-kit-client.so``
      is thread-safe, so up to that many calls run at once, each on its lane's
      own work session of a member connection (:func:`lane_index`,
      :class:`~hacli.engine.member.Connection`).  Each call's deadline is
      published on its lane for the :class:`~hacli.engine.watchdog.Watchdog`,
      which abandons the instance and cuts its transport when a call
      overstays (failing every call in flight on it).  The worker thread only
      runs clean-up handed to :meth:`submit`, and finalizes an abandoned
      instance.
    * **worker** (any other module): every call is handed to the worker thread
      and waited for with the timeout; a stuck call keeps the worker, never
      the caller.  One lane: the module is called by one thread at a time.

    Loading, re-initialising and finalizing the module, and every task of the
    worker, hold *all* lanes: nothing else runs in the module meanwhile.

    :param library: path of the module (``.so``).
    :param env: environment the module needs while loading/initialising.
    :param workdir: private directory for the library copy.
    :param name: for thread names and messages (member serial(s)).
    :param watchdog: the engine's watchdog; without one, calls go to the worker.
    :param concurrency: lanes of a direct instance (``MemberConcurrency``)
        whose client carries hacli's read fix (:func:`shares_connections_safely`);
        any other instance has one whatever is asked.
    """

    _counter = 0
    _counter_lock = threading.Lock()

    def __init__(self, library: str, env: Mapping[str, str] | None, workdir: str,
                 name: str = "", watchdog: Watchdog | None = None, concurrency: int = 1):
        install_quiet_hooks()
        self.library = library
        self.env = dict(env or {})
        self.workdir = workdir
        self.name = name
        with ModuleInstance._counter_lock:
            ModuleInstance._counter += 1
            self.number = ModuleInstance._counter
        self.key = module_key(library, env)
        self.copy_path: str | None = None
        self.lib: Any = None
        #: the loaded module this instance uses, until its worker has ended
        self._held: Any = None
        #: Incremented at every (re)initialisation: sessions of an older
        #: generation are invalid.
        self.generation = 0
        self.abandoned = False
        self.closed = False
        #: the member's server socket, when the transport can be cut
        self.server_path = server_socket_path(self.env)
        #: inodes of this instance's connections to ``server_path``
        self._sockets: frozenset[int] = frozenset()
        #: every socket of the process when the running (re)initialisation began
        self._sockets_before: frozenset[int] | None = None
        self._drivers: set[StepDriver] = set()
        self._cutter: threading.Thread | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._running: _Task | None = None
        self._state_lock = threading.Lock()
        self._finalized = False
        #: pid of the member's server process (``SO_PEERCRED``), if known
        self._server_pid: int | None = None
        #: the command timeout last asked for (bounds clean-up run on the worker)
        self._timeout_hint = HELPER_TIMEOUT
        #: True: calls run on the caller's thread (see the class docstring)
        self.direct = watchdog is not None and self.server_path is not None
        self._watchdog = watchdog if self.direct else None
        #: calls that may run in the module at once: a module called in
        #: process is not thread-safe under python-pkcs11, and a stock
        #: p11-kit client can hang a call when a shared connection fails: one
        self.concurrency = (max(1, concurrency)
                            if self.direct and shares_connections_safely(library) else 1)
        #: every lane; a call holds one (see the class docstring)
        self.lanes = tuple(_Lane(i) for i in range(self.concurrency))
        # The free lanes, lane 0 last: a list's pop and append are atomic, so
        # taking a free lane costs no lock; a thread alone mostly gets lane 0
        # (the session every connection opens first).
        self._free: list[_Lane] = list(reversed(self.lanes))
        #: callers waiting for a lane (the releaser hands over only if any)
        self._waiters = 0
        self._lane_freed = threading.Condition(threading.Lock())
        # one slot per waiter, first come first served: a freed lane is put in
        # the first slot, so callers that keep arriving on the fast path
        # cannot take every lane from under a waiter (a soak of 8 threads on
        # the one member left starved a failover retry past its budget)
        self._queue_of_waiters: collections.deque[list[_Lane | None]] = collections.deque()
        # one taker of *all* lanes at a time (two would each hold some)
        self._exclusive = threading.Lock()
        #: most calls seen in the module at once (a statistic)
        self.peak_in_flight = 0
        self._thread = threading.Thread(
            target=self._work, name=f"hacli-module-{self.number}-{name}", daemon=True)
        self._thread.start()
        if self._watchdog is not None:
            self._watchdog.watch(self)

    def __repr__(self) -> str:
        state = "abandoned" if self.abandoned else "closed" if self.closed else "ok"
        return f"<ModuleInstance #{self.number} {self.library} {state}>"

    @property
    def in_flight(self) -> int:
        """Lanes held now: calls running in the module (all of them while the
        worker or a load, re-initialisation or finalization runs)."""
        return self.concurrency - len(self._free)

    @property
    def usable(self) -> bool:
        """False once abandoned (stuck) or closed: get a new instance instead."""
        return not (self.abandoned or self.closed)

    # -- worker -----------------------------------------------------------
    def _work(self) -> None:
        _LOCAL.instance = self
        while True:
            task = self._queue.get()
            if task is _STOP:
                break
            if task is _WAKE:
                if self.abandoned:
                    break
                continue
            held = self._hold_all()
            try:
                self._run_task(task, held[0])
            finally:
                self._give_all(held)
            del task
            if self.abandoned:
                break
        # Leaving.  If we were abandoned the stuck call has returned (its
        # transport was cut, or the member resumed), on this thread or on a
        # direct callers', which have let go of their lanes: end the helpers
        # parked in operations and finalize.
        if self.abandoned:
            held = self._hold_all()
            try:
                self._drain(ModuleUnavailable(self.name))
                self._finalize()
            finally:
                self._give_all(held)
            with _GRAVEYARD_LOCK:
                _GRAVEYARD.discard(self)
        self._release()
        _LOCAL.instance = None

    def _run_task(self, task: _Task, lane: _Lane) -> None:
        """Run one queued task (worker, every lane held; ``lane`` carries its deadline)."""
        with self._state_lock:
            if self.abandoned or self._finalized:
                task.future.set_exception(ModuleUnavailable(self.name))
                return
            task.started = time.monotonic()
            self._running = task
            if self.direct:  # the watchdog bounds clean-up work as well
                lane.deadline = task.started + self._timeout_hint
        if task.future.set_running_or_notify_cancel():
            try:
                result = task.fn(*task.args)
            except BaseException as e:
                _drop_locals(e)
                task.future.set_exception(e)
            else:
                task.future.set_result(result)
                del result
        with self._state_lock:
            self._running = None
            lane.deadline = None

    def _release(self) -> None:
        """The worker is done: a finalized module nobody runs in goes to the pool."""
        lib, self._held = self._held, None
        if lib is not None and self.lib is None and not self.drivers():
            _pool_put(self.key, lib)

    def _drain(self, exc: BaseException) -> None:
        while True:
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                return
            if task is not _STOP and not task.future.done():
                task.future.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float,
             operation: str = "", wait_behind: bool = True,
             full_timeout: float | None = None, exclusive: bool = False) -> T:
        """Run ``fn(*args)`` in the module, bounded by ``timeout`` s of its run.

        Direct instances run it on the calling thread holding a lane (waiting
        for a free one is bounded by ``timeout`` too); the others on the
        worker.  A caller that finds every lane taken for all of ``timeout``
        waits on while a running call is within its own deadline, or, without
        ``wait_behind`` (a failover retry: another member may be free),
        raises :class:`MemberBusy`.  Raises :class:`CallTimeout` (and
        abandons the instance, cutting its transport) when the running call
        exceeds the timeout,
        :class:`ModuleUnavailable` when the instance is already abandoned or
        closed, else whatever ``fn`` raised.

        ``full_timeout`` (the member's command timeout, when ``timeout`` is a
        failover retry's shorter budget): a direct call past ``timeout`` is cut
        only when the member's server process is seen stopped; one that is
        merely slow (a long key generation, a starved machine) runs on to
        ``full_timeout``.  A healthy member is never cut before its
        ``ReceiveTimeout``.

        ``exclusive``: hold every lane (loading, re-initialising, finalizing
        the module: no other call may run in it meanwhile).
        """
        if not self.direct:
            return self._call_on_worker(fn, args, timeout, operation)
        if self.abandoned or self.closed:
            raise ModuleUnavailable(self.name)
        held: list[_Lane] | None = None
        if exclusive:
            held = self._take_all(time.monotonic() + 2 * max(timeout, self._timeout_hint) + 1.0)
            if held is None:
                raise CallTimeout(operation, self.name, timeout)
            lane = held[0]
        else:
            try:
                if self._waiters:  # others wait: queue behind them
                    raise IndexError
                lane = self._free.pop()  # the common case: a lane is free
            except IndexError:
                lane = self._wait_for_lane(timeout, wait_behind, operation)
        local = _LOCAL
        outer = local.lane  # a call made from inside another instance's call
        local.lane = lane.index
        try:
            if self.abandoned or self._finalized:
                raise ModuleUnavailable(self.name)
            busy = self.concurrency - len(self._free)
            if busy > self.peak_in_flight:
                self.peak_in_flight = busy
            self._timeout_hint = timeout
            now = time.monotonic()
            if full_timeout is not None and full_timeout > timeout:
                lane.hard_deadline = now + full_timeout
            lane.deadline = now + timeout
            try:
                return fn(*args)
            except BaseException as e:
                _drop_locals(e)
                if self.abandoned:  # the watchdog cut the transport under it
                    raise CallTimeout(operation, self.name, timeout) from None
                raise
            finally:
                lane.deadline = None
                lane.hard_deadline = None
        finally:
            local.lane = outer
            if held is None:
                self._free.append(lane)  # (_give, inline: this is every call)
                if self._waiters:
                    self._hand_over()
            else:
                self._give_all(held)

    # -- lanes ------------------------------------------------------------------
    def _give(self, lane: _Lane) -> None:
        """Free ``lane``; hand it to the first waiter if there is one."""
        self._free.append(lane)
        if self._waiters:
            self._hand_over()

    def _hand_over(self) -> None:
        """Free lanes go to the waiters' slots, first come first served."""
        with self._lane_freed:
            queue_ = self._queue_of_waiters
            while queue_:
                try:
                    lane = self._free.pop()
                except IndexError:
                    break
                queue_.popleft()[0] = lane
            self._lane_freed.notify_all()

    def _take(self, deadline: float | None) -> _Lane | None:
        """A free lane, waiting in turn until ``deadline`` (None: for ever);
        None if none came.

        A waiter counts itself under the condition *before* it looks at the
        free list, and a releaser appends *before* it reads the count: a lane
        freed meanwhile is either seen by the waiter or handed over to it.
        """
        with self._lane_freed:
            self._waiters += 1
            try:
                try:
                    return self._free.pop()
                except IndexError:
                    pass
                slot: list[_Lane | None] = [None]
                self._queue_of_waiters.append(slot)
                while slot[0] is None:
                    if deadline is None:
                        self._lane_freed.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._queue_of_waiters.remove(slot)
                        return None
                    self._lane_freed.wait(left)
                return slot[0]
            finally:
                self._waiters -= 1

    def _take_all(self, deadline: float | None) -> list[_Lane] | None:
        """Every lane (nothing else runs in the module while they are held),
        waiting until ``deadline`` (None: for ever); None if they did not all come."""
        wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._exclusive.acquire(True, wait):
            return None
        held: list[_Lane] = []
        try:
            for _ in self.lanes:
                lane = self._take(deadline)
                if lane is None:
                    self._give_all(held)
                    return None
                held.append(lane)
            return held
        finally:
            self._exclusive.release()

    def _hold_all(self) -> list[_Lane]:
        """Every lane, waiting as long as it takes (the worker: a stuck direct
        call is freed by the watchdog's cut)."""
        held = self._take_all(None)
        assert held is not None  # without a deadline it returns only with them all
        return held

    def _give_all(self, held: list[_Lane]) -> None:
        for lane in held:
            self._give(lane)

    def _wait_for_lane(self, timeout: float, wait_behind: bool, operation: str) -> _Lane:
        """No lane was free: wait for one, bounded as :meth:`call` says."""
        lane = self._take(time.monotonic() + timeout)
        if lane is not None:
            return lane
        if not wait_behind:
            raise MemberBusy(self.name)
        lane = self._take_behind(timeout)
        if lane is None:
            raise CallTimeout(operation, self.name, timeout)
        return lane

    def _take_behind(self, timeout: float) -> _Lane | None:
        """No lane was free within the caller's ``timeout``: long calls hold
        them (a key pair generation, an inventory).  That is a busy member, not
        a dead one: each holder is bounded by its own deadline (the watchdog
        abandons the instance past it), so wait on while the first of them is
        within it.  None only after twice the longest timeout asked for (a
        waiter no lane ever came to)."""
        give_up = time.monotonic() + 2 * max(timeout, self._timeout_hint) + 1.0
        while True:
            if self.abandoned or self.closed:
                raise ModuleUnavailable(self.name)
            now = time.monotonic()
            if now >= give_up:
                return None
            deadlines = [d for d in (lane.deadline for lane in self.lanes) if d is not None]
            holder_left = min(deadlines) - now if deadlines else self._timeout_hint
            wait = min(give_up - now, max(0.005, holder_left + 3 * PERIOD))
            lane = self._take(now + wait)
            if lane is not None:
                return lane

    def check_deadline(self, now: float) -> None:
        """Watchdog: abandon the instance if a running call is past its deadline
        (a retry's shorter one only while the member's server is stopped)."""
        for lane in self.lanes:
            deadline = lane.deadline
            if deadline is None or now < deadline:
                continue
            hard = lane.hard_deadline
            if hard is not None and now < hard:
                if lane.spared == deadline:
                    continue
                if not self._server_stopped():
                    lane.spared = deadline
                    continue
            self._expire(lane, deadline)
            return

    def _server_stopped(self) -> bool:
        """True when the member's server process is stopped (``SIGSTOP``: its
        state ``T``), so it cannot answer whatever the timeout; False when it
        runs, or when hacli cannot tell (a server in another PID namespace)."""
        pid = self._server_pid
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            return False
        fields = stat[stat.rindex(b")") + 2:].split()
        return bool(fields) and fields[0] in (b"T", b"t")

    def _expire(self, lane: _Lane, deadline: float) -> None:
        """Abandon (if the call with ``deadline`` is still running on ``lane``)
        and cut: every call in flight on the instance fails."""
        with self._state_lock:
            if self.abandoned or lane.deadline != deadline:
                return
            self._abandon_locked()
        self._queue.put(_WAKE)
        self._start_cutting()

    def _call_on_worker(self, fn: Callable[..., T], args: tuple[Any, ...], timeout: float,
                        operation: str) -> T:
        """:meth:`call` for an instance without a direct path: hand it to the worker."""
        if not self.usable:
            raise ModuleUnavailable(self.name)
        task = _Task(fn, args)
        self._queue.put(task)
        fut: Future[T] = task.future  # the future of ``fn``'s result
        while True:
            with self._state_lock:
                running = self._running
                started = running.started if running is not None else None
            if started is None:
                wait = timeout
            else:
                wait = max(0.0, started + timeout - time.monotonic()) + 0.001
            try:
                return fut.result(timeout=wait)
            except TimeoutError:
                pass
            cut = False
            with self._state_lock:
                running = self._running
                hung = (running is not None and running.started is not None
                        and time.monotonic() - running.started >= timeout)
                if self.abandoned:
                    hung = True
                if hung and not self.abandoned:
                    self._abandon_locked()
                    cut = True
            if cut:
                self._start_cutting()
            if hung:
                if fut.done():  # finished in the meantime after all
                    return fut.result()
                raise CallTimeout(operation, self.name, timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any] | None:
        """Queue ``fn(*args)`` on the worker without waiting (clean-up work).

        Returns the future, or None when the instance is abandoned or closed
        (the task would never run).  Nobody bounds it: use it only for work
        that must run in order with the calls already queued, e.g. ending a
        multi-part operation on a member that was just marked down.
        """
        if not self.usable:
            return None
        task = _Task(fn, args)
        self._queue.put(task)
        return task.future

    def _abandon_locked(self) -> None:
        self.abandoned = True
        if self._watchdog is not None:
            self._watchdog.unwatch(self)
        with _GRAVEYARD_LOCK:
            _GRAVEYARD.add(self)
        self._drain(ModuleUnavailable(self.name, "module instance abandoned after a timeout"))

    # -- the transport --------------------------------------------------------
    def _connect_begin(self) -> None:
        if self.server_path is not None:
            self._sockets_before = frozenset(_socket_inodes())
            with _SOCKET_LOCK:
                _CONNECTING[self.number] = (self.server_path, self._sockets_before)

    def _connect_end(self) -> None:
        """Record the sockets the (re)initialisation connected to the server."""
        path, before = self.server_path, self._sockets_before
        self._sockets_before = None
        with _SOCKET_LOCK:
            _CONNECTING.pop(self.number, None)
        if path is None or before is None:
            return
        new = [ino for ino in _socket_inodes() if ino not in before]
        connected = _sockets_to(path, new) if new else {}
        mine = frozenset(connected)
        with _SOCKET_LOCK:
            for ino in self._sockets:
                if _SOCKET_OWNERS.get(ino) == self.number:
                    del _SOCKET_OWNERS[ino]
            for ino in mine:
                _SOCKET_OWNERS[ino] = self.number
        self._sockets = mine
        self._server_pid = _peer_pid(connected)

    def _forget_sockets(self) -> None:
        with _SOCKET_LOCK:
            for ino in self._sockets:
                if _SOCKET_OWNERS.get(ino) == self.number:
                    del _SOCKET_OWNERS[ino]
        self._sockets = frozenset()
        self._server_pid = None

    def cut_transport(self) -> int:
        """Shut down this instance's connections to its member's server, so a
        call stuck in them returns (``DeviceError``).  The descriptors stay
        the module's (``C_Finalize`` closes them).  Returns how many sockets
        were shut down: 0 for a module whose transport cannot be cut.

        The connections are the sockets recorded at (re)initialisation; while
        one is still running (a ``C_Initialize`` stuck on a frozen server),
        also the sockets to the server made since it began that no other
        instance has recorded.
        """
        path = self.server_path
        if path is None:
            return 0
        mine, before = self._sockets, self._sockets_before
        with _SOCKET_LOCK:
            others = {ino for ino, n in _SOCKET_OWNERS.items() if n != self.number}
            # a newer instance of the same member connecting right now (its
            # recovery): the sockets made since it began may be its own
            newer = [b for n, (p, b) in _CONNECTING.items() if n != self.number and p == path]
        cut = 0
        for ino, fd in _socket_inodes().items():
            if ino in others or (ino not in mine and (before is None or ino in before)):
                continue
            if ino not in mine and any(ino not in b for b in newer):
                continue
            sock = _borrow(fd, ino)
            if sock is None:
                continue
            with sock:
                if _peer_path(sock) != path:
                    continue
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    cut += 1
        return cut

    def _start_cutting(self) -> None:
        """Abandoned: cut the transport now, and again on a short-lived thread
        while the worker is still inside the module (a ``C_Initialize`` that
        reconnects), at most :data:`CUT_LIMIT` seconds."""
        if self.server_path is None:
            return
        self.cut_transport()
        with self._state_lock:
            if self._cutter is not None or not self._thread.is_alive():
                return
            self._cutter = threading.Thread(target=self._keep_cutting, daemon=True,
                                            name=f"hacli-cut-{self.number}-{self.name}")
        self._cutter.start()

    def _keep_cutting(self) -> None:
        deadline = time.monotonic() + CUT_LIMIT
        pause = 0.001
        while time.monotonic() < deadline:
            self._thread.join(pause)
            if not self._thread.is_alive():
                return
            self.cut_transport()
            pause = min(pause * 2, 0.05)

    # -- multi-part helpers -----------------------------------------------------
    def adopt(self, driver: StepDriver) -> None:
        """Track a multi-part helper started on this instance (worker thread),
        so that it is ended before the module is finalized or re-initialised."""
        with self._state_lock:
            self._drivers = {d for d in self._drivers if not d.done}
            self._drivers.add(driver)

    def drivers(self) -> list[StepDriver]:
        """The multi-part helpers of this instance that have not ended."""
        with self._state_lock:
            return [d for d in self._drivers if not d.done]

    def _end_helpers(self, timeout: float = HELPER_TIMEOUT) -> None:
        """Abort every helper still in an operation, one at a time (worker only)."""
        for d in self.drivers():
            d.abort(timeout=timeout)
        with self._state_lock:
            self._drivers = {d for d in self._drivers if not d.done}

    def threads(self) -> list[threading.Thread]:
        """This instance's threads still alive: its worker and its helpers."""
        with self._state_lock:
            drivers = list(self._drivers)
        out = [t for t in (self._thread, self._cutter) if t is not None and t.is_alive()]
        return out + [d.thread for d in drivers if d.thread.is_alive()]

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for the worker and helpers to end; True if they did."""
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        while True:
            alive = [t for t in self.threads() if t is not me]
            left = deadline - time.monotonic()
            if not alive or left <= 0:
                return not alive
            alive[0].join(left)

    # -- module lifecycle (these run on the worker) ------------------------
    def _remove_copy(self) -> None:
        if self.copy_path:
            with contextlib.suppress(OSError):
                os.unlink(self.copy_path)

    def _load(self) -> Any:
        if self.lib is not None:
            return self.lib
        if self._finalized:
            raise ModuleUnavailable(self.name)
        lib = _pool_take(self.key)
        if lib is not None:
            # a finalized copy of this very module (same key): initialise it again
            self._held = lib
            self._connect_begin()
            try:
                with ENV_GATE.enter(self.env):
                    lib.initialize()
            finally:
                self._connect_end()
        else:
            base = os.path.basename(self.library)
            self.copy_path = os.path.join(self.workdir, f"m{self.number}-{base}")
            shutil.copy2(self.library, self.copy_path)
            # Split python-pkcs11's lib construction: __cinit__ (dlopen +
            # C_GetFunctionList, where p11-kit-client reads its address) and
            # __init__ (C_Initialize + C_GetInfo, where SoftHSM2 reads its conf
            # and p11-kit-client connects) both under the environment lease;
            # bypasses pkcs11.lib's path cache.  The mapped copy is deleted at
            # once.  A copy whose C_Initialize failed has no python-pkcs11 object
            # pointing into it and may be unloaded; one that succeeded is kept.
            self._connect_begin()
            try:
                with ENV_GATE.enter(self.env):
                    try:
                        # python-pkcs11's lib is a Cython type: __new__ takes the
                        # path (it loads the file), __init__ runs C_Initialize
                        lib = _pkcs11.lib.__new__(_pkcs11.lib, self.copy_path)  # type: ignore[call-arg]
                    finally:
                        self._remove_copy()
                    lib.__init__(self.copy_path)  # type: ignore[misc]
            finally:
                self._connect_end()
            _keep_forever(lib)
            self._held = lib
        self.lib = lib
        self.generation += 1
        return lib

    def _reinitialize(self) -> Any:
        if self.lib is None:
            return self._load()
        # operations of the old generation end first: their C_xFinal must not
        # reach a session handle of the new one
        self._end_helpers()
        # a dead connection may refuse C_Finalize; we initialise anew anyway
        with contextlib.suppress(pkcs11.PKCS11Error):
            self.lib.finalize()
        self._connect_begin()
        try:
            with ENV_GATE.enter(self.env):
                self.lib.initialize()
        finally:
            self._connect_end()
        self.generation += 1
        return self.lib

    def _finalize(self) -> None:
        """End the helpers, then ``C_Finalize`` (worker only).  The module stays
        loaded: python-pkcs11 objects may still point into it."""
        self._end_helpers()
        with self._state_lock:
            self._finalized = True  # no later task runs on this instance
        lib, self.lib = self.lib, None
        if lib is not None:
            with contextlib.suppress(Exception):
                lib.finalize()
        self._forget_sockets()
        self._remove_copy()

    #: Former name of :meth:`_finalize` (nothing is unloaded any more).
    _unload = _finalize

    def load(self, timeout: float) -> Any:
        """Load (once) and initialise the module; returns the python-pkcs11 lib."""
        return self.call(self._load, timeout=timeout, operation="C_Initialize", exclusive=True)

    def reinitialize(self, timeout: float) -> Any:
        """``C_Finalize`` + ``C_Initialize``: every session of the instance is gone."""
        return self.call(self._reinitialize, timeout=timeout, operation="C_Initialize",
                         exclusive=True)

    def close(self, timeout: float = 2.0) -> None:
        """End the helpers and finalize (on the worker), stop the worker, and
        wait (at most about ``timeout`` s more) for its threads to end.

        A call that does not finish within ``timeout`` (a frozen member)
        abandons the instance; an abandoned instance's transport is cut, so its
        stuck call returns and its worker ends the helpers, finalizes and
        exits.  Only a module whose transport cannot be cut keeps its thread
        until the call returns.
        """
        if self.closed:
            return
        if not self.abandoned:
            with contextlib.suppress(Exception):
                self.call(self._finalize, timeout=timeout, operation="C_Finalize",
                          exclusive=True)
        self.closed = True
        if self._watchdog is not None and not self.abandoned:
            # (an abandoned instance was unwatched already; its worker still
            # needs the cut below to get out of the module)
            self._watchdog.unwatch(self)
        if self.abandoned:
            self._start_cutting()
        self._queue.put(_STOP)
        self._remove_copy()
        self.join(timeout)


def module_key(library: str,
               env: Mapping[str, str] | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Members with equal keys share one module instance."""
    return (os.path.realpath(library), tuple(sorted((env or {}).items())))


class InstanceRegistry:
    """The module instances of an engine: one current instance per module key.

    Members with equal ``(library, env)`` share the current instance; when it
    is abandoned (a stuck call) the next :meth:`current` makes a fresh one.
    A work directory named like the engine's is claimed (owner file, removed
    at exit and by :meth:`close`), and stale ones next to it are removed.
    ``concurrency``: calls at once per direct instance (see :class:`ModuleInstance`).
    """

    def __init__(self, workdir: str, concurrency: int = 1):
        self.workdir = workdir
        #: lanes of each direct instance (``MemberConcurrency``)
        self.concurrency = concurrency
        #: frees direct calls stuck in a member (one per registry, i.e. per engine)
        self.watchdog = Watchdog()
        self._owns_workdir = claim_workdir(workdir)
        if self._owns_workdir:
            remove_stale_workdirs(os.path.dirname(os.path.abspath(workdir)))
        self._lock = threading.Lock()
        self._current: dict[Any, ModuleInstance] = {}
        self._all: list[ModuleInstance] = []

    def current(self, library: str, env: Mapping[str, str] | None,
                name: str = "") -> ModuleInstance:
        key = module_key(library, env)
        with self._lock:
            inst = self._current.get(key)
            if inst is None or not inst.usable:
                # forget abandoned instances whose threads have all ended
                self._all = [i for i in self._all
                             if not (i.abandoned and not i.threads())]
                inst = ModuleInstance(library, env, self.workdir, name, self.watchdog,
                                      self.concurrency)
                self._current[key] = inst
                self._all.append(inst)
            return inst

    def instances(self) -> list[ModuleInstance]:
        with self._lock:
            return list(self._all)

    def close(self, timeout: float = 2.0) -> None:
        """Close every instance (in parallel), wait for their threads, bounded
        (about ``2 * timeout`` s at worst), and remove the work directory."""
        with self._lock:
            instances, self._all, self._current = self._all, [], {}
        closers = [threading.Thread(target=i.close, args=(timeout,), daemon=True,
                                    name=f"hacli-close-{i.number}") for i in instances]
        for t in closers:
            t.start()
        deadline = time.monotonic() + 2 * timeout + 1.0
        for t in closers:
            t.join(max(0.0, deadline - time.monotonic()))
        for i in instances:
            i.join(max(0.0, deadline - time.monotonic()))
        self.watchdog.close()
        if self._owns_workdir:
            remove_workdir(self.workdir)


__all__ = ["CUT_LIMIT", "ENV_GATE", "ENV_LEASE", "HELPER_TIMEOUT", "OWNER_FILE", "WORKDIR_PREFIXES",
           "InstanceRegistry", "ModuleInstance", "claim_workdir",
           "current_instance", "from_pkcs11_cleanup", "install_quiet_hooks",
           "kept_libraries", "lane_index", "lane_local", "make_workdir", "module_key",
           "pooled_libraries",
           "process_start_time",
           "remove_stale_workdirs", "remove_workdir", "server_socket_path"]
