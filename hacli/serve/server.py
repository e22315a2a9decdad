"""The unix socket server: one thread per connection, peer credentials checked.

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
import logging
import os
import selectors
import socket
import stat
import struct
import threading
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


#: Calls of one connection served at once: p11-kit's client sends the calls of
#: its threads over one socket without waiting for each other's answers (each
#: frame carries a code its answer repeats), so a client's threads reach
#: several members at once only if the server runs their calls side by side.
CALLS_PER_CONNECTION = 16


class _Link:
    """One connection's calls, served by a small team of threads taking turns
    (leader/follower): one thread reads the next request while the others run
    theirs; whoever read a request runs it and writes its answer.  A
    one-thread client thus costs no hand-off on its calls' path: the next
    reader is woken while the call runs."""

    def __init__(self, conn: socket.socket, client: ClientState) -> None:
        self.conn = conn
        self.client = client
        self.version = 0
        self.calls = 0
        self.why = "closed by the client"
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._state = threading.Lock()
        self._waiting = 0  # threads waiting for their turn to read
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
            self._close(f"dropped: {e.strerror or e}" if isinstance(e, OSError)
                        else f"dropped: {e}")

    def _take_turns(self) -> None:
        while True:
            with self._state:
                self._waiting += 1
            with self._read_lock:
                with self._state:
                    self._waiting -= 1
                    if self._closed:
                        return
                try:
                    frame = read_frame(self.conn)
                except BaseException:
                    self._close(None)
                    raise
                if frame is None:
                    self._close(None)
                    return
                self._ensure_reader()
            code, body = frame
            response = self.client.handle(Reader(body, self.version))
            with self._write_lock:
                self.calls += 1
                write_frame(self.conn, code, response)

    def _ensure_reader(self) -> None:
        """Someone must read the next request while this one runs."""
        with self._state:
            if self._waiting or len(self._team) + 1 >= CALLS_PER_CONNECTION:
                return
            t = threading.Thread(target=self._helper, daemon=True,
                                 name=f"{threading.current_thread().name}-{len(self._team) + 1}")
            self._team.append(t)
        t.start()

    def _close(self, why: str | None) -> None:
        with self._state:
            first = not self._closed
            self._closed = True
            if why is not None and first:
                self.why = why
        if first:
            # the other threads: a reader sees EOF; callers finish and answer
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RD)

    def end(self) -> None:
        """After :meth:`serve` (or its error): every thread of the team has ended."""
        self._close(None)
        for t in list(self._team):
            t.join()


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
        link = _Link(conn, client)
        try:
            link.version = negotiate(conn)
            link.serve()
        except ProtocolError as e:
            link.why = f"dropped: {e}"
        except OSError as e:
            link.why = f"dropped: {e.strerror or e}"
        finally:
            link.end()
            try:
                client.close()
            except Exception as e:  # the engine said no while ending its sessions
                LOG.debug("closing connection %d: %s", client.id, e)
            with self._lock:
                self._conns.pop(conn.fileno(), None)
            conn.close()
            LOG.info("connection %d from pid %d: %s after %d calls",
                     client.id, pid, link.why, link.calls)

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
