"""The unix socket server: a small team of threads per connection, peer credentials checked.

Like ``p11-kit server`` (p11-kit/server.c): a unix stream socket, no TCP.
The socket is created mode 0600 (under a 0177 umask, so it is never wider)
in a directory only its owner can write; every connection's peer uid
(``SO_PEERCRED``) must be the server's own or one given with ``--allow-uid``.

Stopping (:meth:`Server.stop`, from a signal handler): no new connection is
accepted, every connection's read side is shut down -- an idle one sees the
end of its stream, one in the middle of a call finishes it and sends the
answer -- the threads are joined, the socket file is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import socket
import stat
import struct
import termios
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from hacli.errors import UsageError
from hacli.serve.calls import ClientState, Service
from hacli.serve.codec import Reader
from hacli.serve.wire import ProtocolError, negotiate, read_frame, write_frame

LOG = logging.getLogger("hacli.serve")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def check_directory(directory: Path) -> None:
    """The socket's directory must exist, be ours and be writable by us alone."""
    try:
        st = directory.stat()
    except FileNotFoundError as e:
        raise UsageError(f"--socket: directory {directory} does not exist") from e
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--socket: {directory} is not a directory")
    if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(f"--socket: directory {directory} must be owned by uid {os.getuid()} "
                         f"and writable by its owner only (it is mode "
                         f"{stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid})")


def check_socket_path(path: Path) -> None:
    """The socket can be made at ``path``: its directory is right, and nothing is
    there but a stale socket (which is removed)."""
    check_directory(path.parent)
    if path.exists() or path.is_symlink():
        if not _stale(path):
            raise UsageError(f"--socket: {path} exists and is not a stale socket "
                             "(another server listening, or not a socket)")
        path.unlink()


def _stale(path: Path) -> bool:
    """True when ``path`` is a socket nobody listens on (a crashed server's)."""
    if not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    finally:
        probe.close()
    return False


def dropped(e: ProtocolError | OSError) -> str:
    """Why a connection ended, for its log line."""
    return f"dropped: {e.strerror or e}" if isinstance(e, OSError) else f"dropped: {e}"


#: Calls of one connection served at once: p11-kit's client sends the calls of
#: its threads over one socket without waiting for each other's answers (each
#: frame carries a code its answer repeats), so a client's threads reach
#: several members at once only if the server runs their calls side by side.
CALLS_PER_CONNECTION = 16
#: How long a call runs before another thread of its connection reads a request
#: that arrived meanwhile (at once when one was already waiting as the call was
#: read).  Most calls are shorter: their own thread reads on.  A one-thread
#: client never has a request waiting while its call runs, so it costs no
#: thread hand-off however long its calls take; a call stuck on a frozen member
#: holds the connection's next request about this long, not for its timeout.
HAND_OFF_AFTER = 0.002
#: How often the server looks for calls past HAND_OFF_AFTER while its clients
#: are busy, and while they have been idle for IDLE_AFTER seconds.
TICK, IDLE_TICK, IDLE_AFTER = 0.002, 0.02, 1.0

_FIONREAD = struct.Struct("i")


def _pending(sock: socket.socket) -> bool:
    """Whether bytes wait to be read on ``sock`` (FIONREAD), without reading."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * _FIONREAD.size)
    except OSError:
        return True  # let a reader find out what is wrong
    return bool(_FIONREAD.unpack(raw)[0])


class Link:
    """One connection's calls, served by a small team of threads.

    One thread at a time holds the *reader* role: it reads the next request,
    gives the role up, runs the call and writes its answer.  A thread whose
    call is done takes the role back if nobody holds it (before it writes the
    answer), so a one-thread client's calls all run on one thread with no
    hand-off.  The role goes to another thread (a waiting member of the team,
    or a new one, up to :data:`CALLS_PER_CONNECTION`) only when a request is
    already waiting on the
    socket as a call is read, or when a request has arrived since and the
    role has been vacant for :data:`HAND_OFF_AFTER` (the server's
    :class:`HandOffs` calls :meth:`hand_off_if_due`): then a client's other
    threads are read and served while a call runs long (a frozen member, a key
    generation).
    """

    def __init__(self, conn: socket.socket, client: ClientState) -> None:
        self.conn = conn
        self.client = client
        self.version = 0
        self.calls = 0
        self.why = "closed by the client"
        self._write_lock = threading.Lock()
        # the state below; taken as a plain lock on every call (its C-level
        # __enter__ is cheaper than the Condition's), waited on as a Condition
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)
        #: a thread holds the reader role (reading, or about to)
        self._reading = True
        #: since when nobody has held it while calls run (None: held)
        self.vacant_since: float | None = None
        #: the role was handed to a waiting thread that has not taken it yet
        self._baton = False
        self._idle = 0  # team threads waiting for the role
        self._team: list[threading.Thread] = []
        self._closed = False

    def serve(self) -> None:
        """Serve until the client closes; raises what ended the connection."""
        self._take_turns()
        for t in list(self._team):
            t.join()

    def _helper(self) -> None:
        try:
            self._take_turns()
        except (ProtocolError, OSError) as e:
            self._close(dropped(e))

    def _take_turns(self) -> None:
        """Read, run, answer; hold the reader role between (see the class)."""
        lock = self._lock
        while True:
            try:
                frame = read_frame(self.conn)
            except BaseException:
                self._close(None)
                raise
            if frame is None:
                self._close(None)
                return
            with lock:
                self._reading = False
                self.vacant_since = time.monotonic()
                if _pending(self.conn):  # another request is there already
                    self._hand_off()
            code, body = frame
            response = self.client.handle(Reader(body, self.version))
            # The vacant role is taken back *before* the answer goes out: a
            # one-thread client sends its next request as soon as it reads the
            # answer, and a role still vacant then would be handed on by the tick.
            with lock:
                mine = self._take_vacant_role()
            with self._write_lock:
                self.calls += 1
                write_frame(self.conn, code, response)
            if not mine:
                with lock:
                    if not self._wait_for_role():
                        return

    def _take_vacant_role(self) -> bool:
        """(Under ``_lock``.)  Take the reader role if nobody holds it."""
        if self._reading or self._closed:
            return False
        self._reading = True
        self.vacant_since = None
        return True

    def _wait_for_role(self) -> bool:
        """(Under ``_lock``.)  Wait until the reader role is handed over; False
        when the connection has ended."""
        self._idle += 1
        try:
            while not self._baton and not self._closed:
                self._turn.wait()
        finally:
            self._idle -= 1
        if self._closed:
            return False
        self._baton = False
        return True

    def hand_off_if_due(self, now: float) -> None:
        """Give the reader role to another thread if it has been vacant for
        :data:`HAND_OFF_AFTER` and a request is waiting (called by the server's
        tick).  A one-thread client never has one waiting while its call runs,
        so however long its calls take, they all run on one thread."""
        since = self.vacant_since
        if since is not None and now - since >= HAND_OFF_AFTER and _pending(self.conn):
            with self._lock:
                if self.vacant_since is not None:
                    self._hand_off()

    def _hand_off(self) -> None:
        """(Under ``_lock``, the role vacant.)  A waiting team thread takes the
        role, or a new one does; if the team is full, the first call to end does."""
        self.vacant_since = None  # handed on, or nothing to hand to: stop asking
        if self._closed or (not self._idle and len(self._team) + 1 >= CALLS_PER_CONNECTION):
            return
        self._reading = True
        if self._idle:
            self._baton = True
            self._turn.notify()
            return
        t = threading.Thread(target=self._helper, daemon=True,
                             name=f"{threading.current_thread().name}-{len(self._team) + 1}")
        self._team.append(t)
        t.start()

    def _close(self, why: str | None) -> None:
        with self._turn:
            first = not self._closed
            self._closed = True
            self.vacant_since = None
            if why is not None and first:
                self.why = why
            self._turn.notify_all()
        if first:
            # the other threads: a reader sees EOF; callers finish and answer
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RD)

    @property
    def threads(self) -> int:
        """Threads that have served this connection (for its log line)."""
        return 1 + len(self._team)

    def end(self) -> None:
        """After :meth:`serve` (or its error): every thread of the team has ended."""
        self._close(None)
        for t in list(self._team):
            t.join()


class HandOffs:
    """The server's tick: hands a connection's reader role on when a call has
    held it past :data:`HAND_OFF_AFTER` (see :class:`Link`).  :meth:`run`
    looks every :data:`TICK` while calls run, every :data:`IDLE_TICK` once none
    was seen running for :data:`IDLE_AFTER`, and not at all while there is no
    connection, until :meth:`stop`."""

    def __init__(self) -> None:
        self._links: set[Link] = set()
        self._changed = threading.Condition(threading.Lock())
        self._running = True
        #: looks taken so far (tests wait on it)
        self.ticks = 0

    def add(self, link: Link) -> None:
        with self._changed:
            self._links.add(link)
            self._changed.notify_all()

    def discard(self, link: Link) -> None:
        with self._changed:
            self._links.discard(link)

    def stop(self) -> None:
        with self._changed:
            self._running = False
            self._changed.notify_all()

    def run(self) -> None:
        busy_at = time.monotonic()
        while True:
            self.ticks += 1
            with self._changed:
                while self._running and not self._links:
                    self._changed.wait()
                if not self._running:
                    return
                links = list(self._links)
            now = time.monotonic()
            for link in links:
                if link.vacant_since is not None:
                    busy_at = now
                    link.hand_off_if_due(now)
            time.sleep(TICK if now - busy_at < IDLE_AFTER else IDLE_TICK)


def bind_owner_only(path: Path) -> socket.socket:
    """A unix stream socket bound at ``path``, created mode 0600 (under a 0177
    umask, so it is never wider, not even for a moment); errors are
    :class:`UsageError`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as e:
        sock.close()
        raise UsageError(f"--socket: cannot bind {path}: {e.strerror or e}") from e
    finally:
        os.umask(old)
    return sock


class Server:
    """Serves a :class:`Service` on a unix socket until :meth:`stop`."""

    def __init__(self, service: Service, path: str | Path,
                 allow_uids: Iterable[int] = ()) -> None:
        self.service = service
        self.path = Path(path).absolute()
        self.allowed = {os.getuid(), *allow_uids}
        self._listener: socket.socket | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._lock = threading.Lock()
        self._conns: dict[int, socket.socket] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._hand_offs = HandOffs()

    @property
    def address(self) -> str:
        """The P11_KIT_SERVER_ADDRESS value."""
        return f"unix:path={self.path}"

    def listen(self) -> None:
        """Create the socket (0600) and listen; errors are :class:`UsageError`."""
        check_socket_path(self.path)
        sock = bind_owner_only(self.path)
        # owner only; with --allow-uid others must be able to connect, and the
        # peer credentials of every connection decide instead
        os.chmod(self.path, 0o666 if self.allowed - {os.getuid()} else 0o600)
        sock.listen(64)
        self._listener = sock

    def serve_forever(self) -> None:
        """Accept connections until :meth:`stop`; then end them and clean up."""
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        ticker = threading.Thread(target=self._hand_offs.run, name="hacli-serve-tick",
                                  daemon=True)
        ticker.start()
        try:
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj == self._stop_r:
                        self._stopping = True
                        break
                    conn, _addr = self._listener.accept()
                    self._admit(conn)
        finally:
            sel.close()
            self._shutdown()
            self._hand_offs.stop()
            ticker.join()

    def stop(self) -> None:
        """Ask the server to stop (safe in a signal handler: one write to a pipe)."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def _admit(self, conn: socket.socket) -> None:
        pid, uid, _gid = peer_credentials(conn)
        if uid not in self.allowed:
            LOG.warning("connection from pid %d uid %d refused: uid not allowed", pid, uid)
            conn.close()
            return
        t = threading.Thread(target=self._serve_connection, args=(conn, pid, uid),
                             name=f"hacli-serve-{pid}", daemon=True)
        with self._lock:
            self._conns[conn.fileno()] = conn
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _serve_connection(self, conn: socket.socket, pid: int, uid: int) -> None:
        client = ClientState(self.service)
        LOG.info("connection %d from pid %d uid %d: opened", client.id, pid, uid)
        link = Link(conn, client)
        self._hand_offs.add(link)
        try:
            link.version = negotiate(conn)
            link.serve()
        except (ProtocolError, OSError) as e:
            link.why = dropped(e)
        finally:
            link.end()
            try:
                client.close()
            except Exception as e:  # the engine said no while ending its sessions
                LOG.debug("closing connection %d: %s", client.id, e)
            self._hand_offs.discard(link)
            with self._lock:
                self._conns.pop(conn.fileno(), None)
            conn.close()
            LOG.info("connection %d from pid %d: %s after %d calls on %d thread%s",
                     client.id, pid, link.why, link.calls, link.threads,
                     "" if link.threads == 1 else "s")

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with self._lock:
            conns = list(self._conns.values())
            threads = list(self._threads)
        for c in conns:  # idle ones see EOF; a call in progress finishes and answers
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RD)
        for t in threads:
            t.join()
        os.close(self._stop_r)
        os.close(self._stop_w)
