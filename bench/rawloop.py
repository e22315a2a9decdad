"""Variant A of ``bench/ha_bench.py``: a raw python-pkcs11 load loop, no hacli code.

What an application would write without hacli, on the same lab stack.  Each
member is reached through a private copy of the lab's ``p11-kit-client.so``,
loaded with that member's ``P11_KIT_SERVER_ADDRESS``: one connection to the
member's ``p11-kit server``, as the engine has, logged in once.  The threads
split the members (:func:`share`): with at least as many threads as members,
thread *i* loads member *i mod n* alone; with fewer, each thread sends its
calls round robin over its share.  Each thread has its own session on each of
its members and no lock of its own: python-pkcs11 releases the GIL in each
call, and p11-kit's client takes calls from several threads on one
connection.  Answers are not checked in the loop (one call per session is made
before the clock starts).

This module imports nothing from hacli: the caller passes the keys' labels and
the data (multitoken's), so A loads the same keys with the same work as B and C.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import Attribute, Mechanism, ObjectClass

#: The class of each mode's key (``random`` needs none).
KEY_CLASS = {
    "rsasign": ObjectClass.PRIVATE_KEY,
    "ecsign": ObjectClass.PRIVATE_KEY,
    "aesenc": ObjectClass.SECRET_KEY,
}


@dataclass(frozen=True)
class Workload:
    """What one call of each mode does (the caller fills in multitoken's values)."""

    #: mode -> label of its key
    labels: Mapping[str, str]
    #: the data signed by rsasign and ecsign
    data: bytes
    #: the plaintext of aesenc (AES-CBC)
    block: bytes
    #: the IV of aesenc
    iv: bytes
    #: bytes asked for by random
    random_bytes: int


@dataclass(frozen=True)
class RawResult:
    """One timed run: calls made, wall seconds, process CPU seconds (every thread)."""

    ops: int
    seconds: float
    cpu_seconds: float


class RawMember:
    """One member through its own copy of the client module (one connection).

    :param library: ``p11-kit-client.so`` (copied to *workdir*: a second load of
        the same path would share the first copy's connection).
    :param env: environment the copy is loaded with (``P11_KIT_SERVER_ADDRESS``).
    :param serial: the member token's serial.
    :param pin: the user PIN (one login for the connection's sessions).
    :param label: find the token by this label instead (``hacli serve``'s HA
        slot: its serial is the group's virtual one).
    """

    _copies = itertools.count(1)

    def __init__(self, library: str, env: Mapping[str, str], workdir: Path, serial: str,
                 pin: str, label: str | None = None):
        copy = workdir / f"raw{next(self._copies)}-{os.path.basename(library)}"
        shutil.copy2(library, copy)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            self.lib = pkcs11.lib(str(copy))  # reads the address, connects
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            copy.unlink()
        self.serial = serial or str(label)
        self.token = (self.lib.get_token(token_label=label) if label is not None
                      else self.lib.get_token(token_serial=serial.encode()))
        self._login = self.token.open(user_pin=pin)
        self.mechanisms = set(self.token.slot.get_mechanisms())

    def operation(self, session: Any, mode: str, work: Workload) -> Callable[[], object]:
        """One call of *mode* on *session* (its key found by label), ready to repeat."""
        if mode == "random":
            return partial(session.generate_random, work.random_bytes * 8)
        found = list(session.get_objects({Attribute.LABEL: work.labels[mode],
                                          Attribute.CLASS: KEY_CLASS[mode]}))
        if not found:
            raise LookupError(f"no {work.labels[mode]!r} key on {self.serial}")
        key = found[0]
        if mode == "rsasign":
            return partial(key.sign, work.data, mechanism=Mechanism.SHA256_RSA_PKCS)
        if mode == "ecsign":
            if Mechanism.ECDSA_SHA256 in self.mechanisms:
                return partial(key.sign, work.data, mechanism=Mechanism.ECDSA_SHA256)
            # as multitoken does where p11-kit cannot forward CKM_ECDSA_SHA256
            digest = hashlib.sha256(work.data).digest()
            return partial(key.sign, digest, mechanism=Mechanism.ECDSA)
        if mode == "aesenc":
            return partial(key.encrypt, work.block, mechanism=Mechanism.AES_CBC,
                           mechanism_param=work.iv)
        raise ValueError(f"unknown mode {mode!r}")

    def close(self) -> None:
        """Log out (close the login session); the loaded copy stays mapped."""
        self._login.close()


def share(index: int, threads: int, members: list[RawMember]) -> list[RawMember]:
    """The members thread *index* of *threads* loads (see the module docstring)."""
    n = len(members)
    if threads >= n:
        return [members[index % n]]
    return [m for j, m in enumerate(members) if j % threads == index]


def run(members: list[RawMember], mode: str, work: Workload, threads: int,
        seconds: float) -> RawResult:
    """*threads* threads call *mode* for *seconds*, spread over *members* (:func:`share`).

    The clocks (wall and process CPU) start when every thread has its sessions
    and keys, and stop when every thread has closed them again.  A failed call
    ends the run with that error.
    """
    counts = [0] * threads
    errors: list[BaseException] = []
    clocks = {"deadline": 0.0, "start": 0.0, "cpu": 0.0}

    def go() -> None:
        clocks["cpu"] = time.process_time()
        clocks["start"] = time.perf_counter()
        clocks["deadline"] = clocks["start"] + seconds

    start = threading.Barrier(threads + 1, action=go)

    def load(index: int) -> None:
        order = share(index, threads, members)
        sessions: list[Any] = []
        try:
            for m in order:
                sessions.append(m.token.open())
            ops = [m.operation(s, mode, work) for m, s in zip(order, sessions, strict=True)]
            for op in ops:  # a first call on each session, before the clock
                op()
            start.wait()
            calls = itertools.cycle(ops)
            deadline = clocks["deadline"]
            n = 0
            while time.perf_counter() < deadline:
                next(calls)()
                n += 1
            counts[index] = n
        except threading.BrokenBarrierError:
            pass  # another thread failed before the start
        except Exception as e:
            errors.append(e)
            start.abort()
        finally:
            for s in sessions:
                s.close()

    pool = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a thread failed: see errors
        start.wait()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - clocks["start"]
    cpu = time.process_time() - clocks["cpu"]
    if errors:
        raise RuntimeError(f"raw {mode}: {errors[0]!r}") from errors[0]
    return RawResult(sum(counts), elapsed, cpu)
