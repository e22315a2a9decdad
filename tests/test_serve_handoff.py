"""How one connection's calls are shared among hacli serve's threads
(``hacli/serve/server.py``: :class:`Link`, :class:`HandOffs`).

A one-thread client's calls all run on one thread (no hand-off per call);
requests already waiting on the socket are read and run side by side at
once; a call that runs long hands the connection on after a moment, so the
client's other threads are served meanwhile.  Real sockets and the server's
own framing; the PKCS#11 side is a stand-in that answers C_GetInfo at once
and holds C_Finalize until released, so every wait here is on a condition.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from hacli.lab.procs import wait_until
from hacli.serve.codec import CALL_IDS, Reader, Writer
from hacli.serve.server import HandOffs, Link
from hacli.serve.wire import encode_frame, read_frame

QUICK = encode_frame(1, Writer(CALL_IDS["C_GetInfo"], request=True).finish())


def held(code: int) -> bytes:
    """A request the stand-in holds until released (C_Finalize), as frame ``code``."""
    return encode_frame(code, Writer(CALL_IDS["C_Finalize"], request=True).finish())


class StandIn:
    """In place of the connection's ClientState: counts the threads that ran
    calls and the calls running at once; C_Finalize waits for :attr:`release`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.threads: set[int] = set()
        self.running = 0
        self.changed = threading.Condition()

    def handle(self, request: Reader) -> bytes:
        with self.changed:
            self.threads.add(threading.get_ident())
            self.running += 1
            self.changed.notify_all()
        try:
            if request.name == "C_Finalize":
                assert self.release.wait(30), "never released"
            return Writer.error(0)
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()

    def wait_running(self, n: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.running >= n, timeout=10)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    client.settimeout(10)
    yield client, server
    client.close()
    server.close()


def _serve(link: Link) -> threading.Thread:
    def run() -> None:
        try:
            link.serve()
        finally:
            link.end()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def ticking(client: socket.socket, server: socket.socket,
            stand_in: StandIn) -> Iterator[tuple[Link, HandOffs]]:
    """The connection served with the server's tick running; at the end every
    held call is released, the client's side closed and the threads joined."""
    hand_offs = HandOffs()
    ticker = threading.Thread(target=hand_offs.run, daemon=True)
    ticker.start()
    link = Link(server, stand_in)  # type: ignore[arg-type]
    hand_offs.add(link)
    t = _serve(link)
    try:
        yield link, hand_offs
    finally:
        stand_in.release.set()
        client.shutdown(socket.SHUT_WR)
        t.join(10)
        hand_offs.discard(link)
        hand_offs.stop()
        ticker.join(10)


def test_a_one_thread_client_is_served_by_one_thread(pair) -> None:
    client, server = pair
    stand_in = StandIn()
    link = Link(server, stand_in)  # type: ignore[arg-type]
    t = _serve(link)
    for _ in range(200):
        client.sendall(QUICK)
        assert read_frame(client) is not None
    client.shutdown(socket.SHUT_WR)
    t.join(10)
    assert not t.is_alive()
    assert link.calls == 200
    # no hand-off per call: the thread that read each request ran it and read on
    assert link.threads == 1 and len(stand_in.threads) == 1


def test_a_one_thread_client_keeps_one_thread_when_its_calls_run_long(pair) -> None:
    """Past HAND_OFF_AFTER with nothing waiting on the socket, the connection is
    not handed on: a one-thread client's long calls (an RSA signature takes about
    a millisecond here) cost no hand-off either."""
    client, server = pair
    stand_in = StandIn()
    with ticking(client, server, stand_in) as (link, hand_offs):
        for code in range(1, 4):
            client.sendall(held(code))
            assert stand_in.wait_running(1)
            # the server looks at the held call several times past HAND_OFF_AFTER
            start = hand_offs.ticks
            assert wait_until(lambda start=start: hand_offs.ticks >= start + 10, 10, 0.001)
            stand_in.release.set()
            answer = read_frame(client)
            assert answer is not None and answer[0] == code
            stand_in.release.clear()
    assert link.threads == 1 and len(stand_in.threads) == 1


def test_the_next_request_after_an_answer_is_read_by_the_same_thread(pair, monkeypatch) -> None:
    """A one-thread client sends its next request the moment it reads an answer.
    Even when the serving thread is slow to go on after writing (a busy machine
    gives it the GIL late: a CI run failed on this), the tick must not see the
    reader role vacant with that request waiting and hand it to a new thread."""
    import hacli.serve.server as server_module

    client, server = pair
    stand_in = StandIn()
    written = server_module.write_frame
    served: list[tuple[Link, HandOffs]] = []

    def slow_after_writing(conn: socket.socket, code: int, response: bytes) -> None:
        written(conn, code, response)
        if code < 3:  # hold the window open: the next request is there, the tick looks
            link, hand_offs = served[0]
            assert wait_until(lambda: server_module._pending(conn) or link.threads > 1,
                              10, 0.001)
            start = hand_offs.ticks
            wait_until(lambda: hand_offs.ticks >= start + 5 or link.threads > 1, 10, 0.001)

    monkeypatch.setattr(server_module, "write_frame", slow_after_writing)
    with ticking(client, server, stand_in) as (link, hand_offs):
        served.append((link, hand_offs))
        for code in range(1, 4):
            client.sendall(held(code))
            assert stand_in.wait_running(1)
            stand_in.release.set()
            answer = read_frame(client)
            assert answer is not None and answer[0] == code
            stand_in.release.clear()
    assert link.calls == 3
    assert link.threads == 1 and len(stand_in.threads) == 1


def test_requests_already_waiting_are_run_side_by_side_at_once(pair) -> None:
    client, server = pair
    stand_in = StandIn()
    client.sendall(held(1) + held(2) + held(3))  # all there before the first read
    link = Link(server, stand_in)  # type: ignore[arg-type]
    t = _serve(link)
    # no tick runs here: only the requests seen waiting hand the connection on
    assert stand_in.wait_running(3), stand_in.running
    stand_in.release.set()
    codes = sorted(frame[0] for frame in (read_frame(client) for _ in range(3)) if frame)
    assert codes == [1, 2, 3]
    client.shutdown(socket.SHUT_WR)
    t.join(10)
    assert link.threads == 3 and len(stand_in.threads) == 3


def test_a_call_that_runs_long_hands_the_connection_on(pair) -> None:
    """A request that arrives while a call is held (a frozen member) is read
    and answered by another thread after about HAND_OFF_AFTER."""
    client, server = pair
    stand_in = StandIn()
    with ticking(client, server, stand_in) as (link, _hand_offs):
        client.sendall(held(7))
        assert stand_in.wait_running(1)
        client.sendall(QUICK)  # not there when the held call was read
        answer = read_frame(client)  # while code 7 is still held
        assert answer is not None and answer[0] == 1
        assert stand_in.running == 1 and not stand_in.release.is_set()
        stand_in.release.set()
        answer = read_frame(client)
        assert answer is not None and answer[0] == 7
    assert link.threads == 2
