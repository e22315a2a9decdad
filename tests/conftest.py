"""Shared fixtures: the lab (real member processes) and a PKCS#11 client for its members.

Fixtures
--------
``lab``           session-scoped :class:`hacli.lab.Lab` with 2 members, up for the whole
                  run, torn down at the end (the teardown asserts that no process of
                  the lab is left).  Read-only use: don't fail/hang members through it.
``healthy_lab``   the same lab, for tests that fail/hang/restore members: every member
                  is running when the test starts and is restored after it, so tests
                  sharing the lab stay independent.
``lab3``          session-scoped 3-member lab (created on first use, ~0.2 s).
``healthy_lab3``  ``lab3`` with the same restore-after-test guarantee.
``member_client`` factory: ``member_client(lab, "member0")`` -> :class:`MemberClient`,
                  a python-pkcs11 client in a child process, logged in to that member
                  only; closed after the test.

Useful lab attributes: ``lab.conf_path`` (the group's Chrystoki.conf),
``lab.pin_file``, ``lab.so_pin_file``, ``lab.members()`` (serial, label, socket,
``env`` for a p11-kit-client copy, ``softhsm2_conf`` / ``softhsm2_env`` to open
that member's token directly through libsofthsm2.so: every member has its own),
``lab.status()``, ``lab.fail/hang/restore(m)``.
Members are addressed by serial or label (``"member0"``).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacli.errors import LabError
from hacli.lab import RUNNING, Lab, find_tools
from hacli.lab.procs import group_pids, pids_with_arg, wait_until
from hacli.lab.provision import provision_lab


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The engine's change journals (and the CLI's status memory) go to a
    directory of the test session, never to the user's ~/.local/state."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


def lab_processes(lab: Lab) -> list[int]:
    """Pids of every live process of *lab*: its servers' groups and anything serving its tokens."""
    found: set[int] = set()
    for rec in json.loads(lab.state_file.read_text())["members"]:
        if rec.get("pid"):
            found.update(group_pids(rec["pid"]))
    for member in lab.members():
        found.update(pids_with_arg(member.uri))
    return sorted(found)


#: ``softhsm2.conf`` as hacli wrote it before each member had its own token
#: directory: every member's token in ``DIR/tokens``.
SHARED_SOFTHSM2_CONF = """\
# SoftHSM2 configuration of the hacli lab in {dir}
# (written by `hacli lab up`; see docs/lab.md).
# Every member's token lives in the token directory below; each member's
# `p11-kit server` exports only its own token.  To open the tokens directly:
#   SOFTHSM2_CONF={dir}/softhsm2.conf pkcs11-tool --module {module} -L
directories.tokendir = {dir}/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
"""


def to_shared_layout(lab: Lab) -> Path:
    """Turn a lab that is down into one an older hacli made: every member's
    token directory moved into ``DIR/tokens``, one ``DIR/softhsm2.conf``, no
    member configuration.  Returns that ``softhsm2.conf``."""
    shared = lab.directory / "tokens"
    shared.mkdir(mode=0o700)
    for m in lab.members():
        own = lab.directory / f"m{m.index}" / "tokens"
        for token in own.iterdir():
            token.rename(shared / token.name)
        own.rmdir()
        m.softhsm2_conf.unlink()
    conf = lab.directory / "softhsm2.conf"
    conf.write_text(SHARED_SOFTHSM2_CONF.format(dir=lab.directory, module=find_tools().softhsm2))
    return conf


def restore_all(lab: Lab) -> None:
    """Bring every member of *lab* back to running (no-op for running ones)."""
    for m in lab.status().members:
        if m.state != RUNNING:
            lab.restore(m.serial)


def _make_lab(tmp_path_factory: pytest.TempPathFactory, name: str, members: int) -> Iterator[Lab]:
    try:
        find_tools()
    except LabError as exc:
        pytest.fail(f"the lab needs SoftHSM2 and p11-kit: {exc}")
    lab = Lab(tmp_path_factory.mktemp(name), timeout=10.0)
    lab.up(members)
    provision_lab(lab)  # as `hacli lab up` does: the group's transport key, once
    yield lab
    lab.down()
    left = lab_processes(lab)
    lab.down(purge=True)
    assert not left, f"lab processes left after down(): {left}"


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 2-member lab, up for the whole session (see the module docstring)."""
    yield from _make_lab(tmp_path_factory, "lab", 2)


@pytest.fixture(scope="session")
def lab3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A 3-member lab, up for the whole session."""
    yield from _make_lab(tmp_path_factory, "lab3", 3)


@pytest.fixture
def healthy_lab(lab: Lab) -> Iterator[Lab]:
    """The 2-member lab with every member running now, and restored after the test."""
    restore_all(lab)
    yield lab
    restore_all(lab)


@pytest.fixture
def healthy_lab3(lab3: Lab) -> Iterator[Lab]:
    """The 3-member lab with every member running now, and restored after the test."""
    restore_all(lab3)
    yield lab3
    restore_all(lab3)


# ---------------------------------------------------------------------------
# A PKCS#11 client of one member, in a child process

_CLIENT = r"""
import atexit, json, os, shutil, sys, tempfile, threading
address, library, pin_file, label = sys.argv[1:5]
# p11-kit-client reads the address when it is loaded, and the loader hands back
# the same instance for the same path: set it first, load a private copy.
os.environ["P11_KIT_SERVER_ADDRESS"] = address
tmp = tempfile.mkdtemp(prefix="hacli-client-")
atexit.register(shutil.rmtree, tmp, True)
copy = os.path.join(tmp, os.path.basename(library))
shutil.copyfile(library, copy)
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
lib = pkcs11.lib(copy)
ns = {"lib": lib, "pkcs11": pkcs11, "Attribute": Attribute, "KeyType": KeyType,
      "Mechanism": Mechanism, "ObjectClass": ObjectClass, "label": label}
def login():
    with open(pin_file) as f:
        pin = f.read().strip()
    ns["token"] = lib.get_token(token_label=label)
    ns["session"] = ns["token"].open(user_pin=pin, rw=True)
ns["login"] = login
pending = None
def run(code, box):
    try:
        try:
            box["value"] = repr(eval(compile(code, "<client>", "eval"), ns))
        except SyntaxError:
            exec(compile(code, "<client>", "exec"), ns)
            box["value"] = repr(ns.get("_"))
    except BaseException as e:
        box["error"] = type(e).__name__
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    if "code" in req:
        box = {}
        pending = (threading.Thread(target=run, args=(req["code"], box), daemon=True), box)
        pending[0].start()
    thread, box = pending
    thread.join(req["timeout"])
    print(json.dumps({"blocked": True} if thread.is_alive() else box), flush=True)
"""


class MemberClient:
    """A python-pkcs11 client of one lab member, in a child process.

    ``call(code)`` runs a Python expression (or statements that set ``_``) in
    the child, where ``lib``, ``token``, ``session`` (logged in, R/W),
    ``pkcs11``, ``KeyType``, ``ObjectClass``, ``Attribute``, ``Mechanism`` and
    ``login()`` are defined, and returns ``{"value": repr}``, ``{"error":
    "DeviceError"}`` (the python-pkcs11 exception class), or ``{"blocked":
    True}`` when the call did not finish within *timeout* (a hung member).
    ``join(timeout)`` waits again for a blocked call.
    """

    def __init__(self, lab: Lab, member: str, login: bool = True):
        m = lab.member(member)
        self.member = m
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CLIENT,
                m.address,
                lab.client_library,
                str(lab.pin_file),
                m.label,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._blocked = False
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        assert self._read(30.0) == {"ready": True}
        if login:
            result = self.call("login()")
            assert "value" in result, f"login to {m.label} failed: {result}"

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)

    def _read(self, timeout: float) -> dict[str, Any]:
        try:
            return json.loads(self._lines.get(timeout=timeout))
        except queue.Empty:
            raise AssertionError(f"client of {self.member.label} did not answer") from None

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        answer = self._read(request["timeout"] + 30.0)
        self._blocked = bool(answer.get("blocked"))
        return answer

    def call(self, code: str, timeout: float = 10.0) -> dict[str, Any]:
        return self._send({"code": code, "timeout": timeout})

    def create_data(self, label: str, value: bytes = b"x") -> None:
        """A token data object made on this member only (bypassing the group)."""
        made = self.call(f"_ = session.create_object({{Attribute.CLASS: ObjectClass.DATA, "
                         f"Attribute.LABEL: {label!r}, Attribute.VALUE: {value!r}, "
                         f"Attribute.TOKEN: True}})")
        assert "value" in made, made

    def destroy_labelled(self, label: str) -> None:
        """Destroy every object with this label on this member."""
        self.call(f"_ = [o.destroy() for o in list(session.get_objects("
                  f"{{Attribute.LABEL: {label!r}}}))]")

    def join(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._send({"timeout": timeout})

    def close(self) -> None:
        if self._blocked:  # stuck in a hung member: it would not read stdin
            self._proc.kill()
        with contextlib.suppress(OSError):
            if self._proc.stdin:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # blocked in a hung member
            self._proc.kill()
            self._proc.wait()


@pytest.fixture
def member_client() -> Iterator[Callable[..., MemberClient]]:
    """Factory ``member_client(lab, member, login=True)``; clients close after the test."""
    clients: list[MemberClient] = []

    def make(lab: Lab, member: str, login: bool = True) -> MemberClient:
        client = MemberClient(lab, member, login)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def poll(condition: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Wait until *condition()* is truthy or *timeout* s pass (no fixed sleeps in tests)."""
    return wait_until(lambda: bool(condition()), timeout)


__all__ = ["MemberClient", "lab_processes", "poll", "restore_all", "to_shared_layout"]
