"""p11-kit RPC framing, read from p11-kit's ``rpc-transport.c`` and ``rpc-server.c``.

A connection starts with one byte each way: the client sends the highest
protocol version it speaks, the server answers with the version both use
(its own maximum when the client's is higher).  p11-kit 0.24.1 speaks
version 0, 0.25.x version 1; the two differ in nothing hacli serves except
the nesting of template attributes in attribute buffers (see ``codec``).

Every message after that is a frame: a 12-byte header of three big-endian
uint32 (call code, options length, body length), the options (the client's
module name, ignored) and the body.  A response carries the request's call
code and no options.
"""

from __future__ import annotations

import socket
import struct

#: the versions hacli speaks (p11-kit's P11_RPC_PROTOCOL_VERSION_MINIMUM/MAXIMUM)
VERSION_MIN = 0
VERSION_MAX = 1

#: frames larger than this are a protocol error, not an allocation (no PKCS#11
#: argument the lab's tokens take comes near it; p11-kit itself caps lengths at 2 GiB)
MAX_FRAME = 16 * 1024 * 1024

_HEADER = struct.Struct(">III")


class ProtocolError(Exception):
    """The peer broke the protocol (or went away mid-frame): drop the connection."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes, or :class:`ProtocolError` when the peer closes first."""
    chunks: list[bytes] = []
    left = n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError(f"connection closed with {left} of {n} bytes unread")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def negotiate(sock: socket.socket) -> int:
    """The server side of the version handshake: read the client's byte, answer."""
    data = sock.recv(1)
    if not data:
        raise ProtocolError("connection closed before the version byte")
    version = min(data[0], VERSION_MAX)
    if version < VERSION_MIN:
        raise ProtocolError(f"unsupported protocol version {data[0]}")
    sock.sendall(bytes([version]))
    return version


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """One request frame: ``(call_code, body)``; None at a clean end of stream."""
    first = sock.recv(_HEADER.size)
    if not first:
        return None
    header = first + (recv_exact(sock, _HEADER.size - len(first))
                      if len(first) < _HEADER.size else b"")
    code, olen, dlen = _HEADER.unpack(header)
    if code == 0:
        raise ProtocolError("invalid frame header (call code 0)")
    if olen > MAX_FRAME or dlen > MAX_FRAME:
        raise ProtocolError(f"frame too large ({olen} + {dlen} bytes)")
    recv_exact(sock, olen)
    return code, recv_exact(sock, dlen)


def encode_frame(code: int, body: bytes, options: bytes = b"") -> bytes:
    """A whole frame (header, options, body)."""
    return _HEADER.pack(code, len(options), len(body)) + options + body


def write_frame(sock: socket.socket, code: int, body: bytes) -> None:
    """Send one response frame."""
    sock.sendall(encode_frame(code, body))
