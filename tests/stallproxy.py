"""A member whose answer stops midway: a fault-injecting proxy for p11-kit's RPC.

The proxy sits between ``p11-kit-client.so`` and a lab member's ``p11-kit
server`` and passes frames through unchanged until it is *armed*.  Armed, it
holds the next answer until at least two requests have gone by it (so two
calls are in flight on the client's connection), then sends only that answer's
12-byte header and stops, as a member frozen between writing a header and a
body would.  The client has then read a header whose body never comes.

Two uses:

* ``python stallproxy.py proxy LISTEN UPSTREAM``: a proxy process for the
  engine's tests.  Prints ``ready`` once listening; SIGUSR1 arms it; it prints
  ``stalled`` when the header has gone out.  It runs until killed.
* ``python stallproxy.py client LIBRARY UPSTREAM PINFILE``: two calls in flight
  through ``LIBRARY`` (a ``p11-kit-client.so``) on one connection, the answer
  stopped after its header, then the connection cut by the proxy; prints one
  JSON object: each call's result (``"DeviceError"``, or ``"waiting"`` when it
  had not come back 5 s after the cut) and the seconds until the last came back.
  It exits with ``os._exit``: a call left waiting inside the module cannot be
  joined.

p11-kit's RPC framing (``p11-kit/rpc-transport.c``): one version byte each way,
then frames of a header (call code, options length, data length; big-endian
32-bit) followed by the options and the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

_HEADER = struct.Struct(">III")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


class StallProxy:
    """Passes p11-kit RPC frames between clients and ``upstream`` until armed."""

    def __init__(self, listen: str, upstream: str):
        self.upstream = upstream
        self.armed = threading.Event()
        self.stalled = threading.Event()
        self._requests_since_armed = 0
        self._requests = threading.Condition()
        self.clients: list[socket.socket] = []
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(listen)
        self._listener.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self._listener.accept()
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.upstream)
            self.clients.append(client)
            threading.Thread(target=self._requests_to, args=(client, server),
                             daemon=True).start()
            threading.Thread(target=self._answers_to, args=(client, server),
                             daemon=True).start()

    def _requests_to(self, client: socket.socket, server: socket.socket) -> None:
        try:
            server.sendall(_recv_exactly(client, 1))  # the version byte
            while True:
                header = _recv_exactly(client, _HEADER.size)
                _code, olen, dlen = _HEADER.unpack(header)
                server.sendall(header + _recv_exactly(client, olen + dlen))
                with self._requests:
                    if self.armed.is_set():
                        self._requests_since_armed += 1
                        self._requests.notify_all()
        except (EOFError, OSError):
            pass

    def _answers_to(self, client: socket.socket, server: socket.socket) -> None:
        try:
            client.sendall(_recv_exactly(server, 1))
            while True:
                header = _recv_exactly(server, _HEADER.size)
                _code, olen, dlen = _HEADER.unpack(header)
                body = _recv_exactly(server, olen + dlen)
                if self.armed.is_set() and not self.stalled.is_set():
                    with self._requests:
                        self._requests.wait_for(lambda: self._requests_since_armed >= 2)
                    client.sendall(header)  # ... and never the body
                    self.stalled.set()
                    return
                client.sendall(header + body)
        except (EOFError, OSError):
            pass

    def cut(self) -> None:
        """Close every client connection (the client reads end of stream)."""
        for c in self.clients:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def _proxy(listen: str, upstream: str) -> None:
    proxy = StallProxy(listen, upstream)
    signal.signal(signal.SIGUSR1, lambda *_: proxy.armed.set())
    print("ready", flush=True)
    proxy.stalled.wait()
    print("stalled", flush=True)
    signal.pause()


def _client(library: str, upstream: str, pin_file: str) -> None:
    listen = f"{upstream}.stall-{os.getpid()}"
    proxy = StallProxy(listen, upstream)
    os.environ["P11_KIT_SERVER_ADDRESS"] = "unix:path=" + listen
    import pkcs11  # after the address is set: the client reads it when loaded

    token = pkcs11.lib(library).get_slots(token_present=True)[0].get_token()
    with open(pin_file) as f:
        pin = f.read().strip()
    sessions = [token.open(user_pin=pin), token.open()]
    results: dict[str, str] = {}

    def call(name: str, session: object) -> None:
        try:
            session.generate_random(128)  # type: ignore[attr-defined]
            results[name] = "ok"
        except Exception as e:  # the outcome is what is reported
            results[name] = type(e).__name__

    proxy.armed.set()
    threads = [threading.Thread(target=call, args=(f"call{i}", s), daemon=True)
               for i, s in enumerate(sessions)]
    for t in threads:
        t.start()
    if not proxy.stalled.wait(10):
        print(json.dumps({"error": "no answer header reached the proxy"}), flush=True)
        os._exit(2)
    # both calls are now inside the module: one reads the body that never
    # comes, the other waits for its own header (or for the read lock)
    while any(t.is_alive() for t in threads) and not all(
            _waiting_in_module(t) for t in threads if t.is_alive()):
        time.sleep(0.01)
    os.unlink(listen)
    proxy.cut()
    cut = time.monotonic()
    for t in threads:
        t.join(max(0.0, cut + 5 - time.monotonic()))
    print(json.dumps({
        "calls": {f"call{i}": results.get(f"call{i}", "waiting") for i in range(2)},
        "seconds": round(time.monotonic() - cut, 3),
    }), flush=True)
    os._exit(0)


def _waiting_in_module(thread: threading.Thread) -> bool:
    """Whether ``thread`` sleeps in the kernel (inside the module's socket read,
    lock or condition wait), from /proc."""
    tid = thread.native_id
    try:
        with open(f"/proc/self/task/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return False


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "proxy":
        _proxy(*args)
    elif role == "client":
        _client(*args)
    else:
        sys.exit(f"usage: {sys.argv[0]} proxy LISTEN UPSTREAM | client LIBRARY UPSTREAM PINFILE")
