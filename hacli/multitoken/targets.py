"""Where the load goes: an HA group's virtual slot, or one member directly.

Both targets offer the same small interface to the modes, so a mode is
written once and the HA layer's cost is measured against the bare member in
one run.  Keys are addressed by an opaque ``key`` value: a virtual handle on
the HA slot, a python-pkcs11 object on a member.

A test key is reused only when it is the one key of its label on the slot: on
the HA slot, exactly one on *every* member in service.  A key made on one
member only (by ``--slot SERIAL``, or outside hacli) would make every call the
balancer gives another member fail over, or fail; such keys are discarded
through the engine and the key is made again through the group, which
replicates it to every member.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from pkcs11 import Attribute, KeyType, ObjectClass

from hacli.multitoken.modes import ModeUnavailable


class Target(Protocol):
    """What a mode needs from the slot under load."""

    name: str

    def find_key(self, label: str, cls: ObjectClass) -> Any | None: ...
    def discard(self, label: str, cls: ObjectClass) -> None: ...
    def generate_key(self, key_type: KeyType, bits: int, label: str) -> Any: ...
    def generate_keypair(self, key_type: KeyType, label: str, bits: int | None = None,
                         curve: str | None = None) -> tuple[Any, Any]: ...
    def worker(self) -> contextlib.AbstractContextManager[Any]: ...
    def mechanisms(self) -> set[Any]: ...
    def member_ops(self) -> dict[str, int]: ...


class HATarget:
    """The virtual slot of an HA group: one virtual session per worker thread."""

    def __init__(self, engine: Any, label: str | None, pin: str):
        self.engine = engine
        self.group = engine.group(label)
        self.name = "ha"
        self._setup = self.group.open_session()
        if not self.group.logged_in:  # login state is per application, as in PKCS#11
            self._setup.login(pin)

    def copies(self, label: str, cls: ObjectClass) -> dict[str, int]:
        """How many objects of this label and class each member in service holds."""
        template = {Attribute.LABEL: label, Attribute.CLASS: cls}
        counts: dict[str, int] = self.group.on_each(
            "C_FindObjects", lambda m, conn: len(list(conn.work.get_objects(template))))
        return counts

    def find_key(self, label: str, cls: ObjectClass) -> Any | None:
        """The key when every member in service holds exactly one of this label."""
        counts = self.copies(label, cls)
        if not counts or set(counts.values()) != {1}:
            return None
        found = self._setup.find_objects({Attribute.LABEL: label, Attribute.CLASS: cls})
        return found[0] if len(found) == 1 else None

    def discard(self, label: str, cls: ObjectClass) -> None:
        """Destroy every object of this label and class, through the group: each
        found on the member that holds it, destroyed on every member (a member
        that is down is told when it is back, from the group's journal)."""
        template = {Attribute.LABEL: label, Attribute.CLASS: cls}
        for serial, n in self.copies(label, cls).items():
            if not n:
                continue
            on_member = self.group.open_session(member=serial)
            try:
                for handle in on_member.find_objects(template):
                    self._setup.destroy_object(handle)
            finally:
                on_member.close()

    def generate_key(self, key_type: KeyType, bits: int, label: str) -> Any:
        key = self._setup.generate_key(key_type, bits, label=label, token=True)
        self._check_everywhere(label, ObjectClass.SECRET_KEY)
        return key

    def generate_keypair(self, key_type: KeyType, label: str, bits: int | None = None,
                         curve: str | None = None) -> tuple[Any, Any]:
        pair = self._setup.generate_keypair(key_type, bits, curve=curve, label=label, token=True)
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            self._check_everywhere(label, cls)
        return pair

    def _check_everywhere(self, label: str, cls: ObjectClass) -> None:
        """Refuse to load a key that did not reach every member in service."""
        counts = self.copies(label, cls)
        lacking = sorted(s for s, n in counts.items() if n != 1)
        if lacking:
            raise ModeUnavailable(
                f"the test key {label!r} is not on every member of {self.group.label} in "
                f"service after it was made through the group (missing or repeated on "
                f"{', '.join(lacking)}); not loading a key that only some members hold")

    @contextlib.contextmanager
    def worker(self) -> Iterator[Any]:
        session = self.group.open_session()
        try:
            yield _HAOps(session)
        finally:
            session.close()

    def mechanisms(self) -> set[Any]:
        return set(self._setup.mechanisms())

    def member_ops(self) -> dict[str, int]:
        return {m.serial: m.ops for m in self.group.status(probe=False).members}

    def close(self) -> None:
        self._setup.close()


class _HAOps:
    """Operations of one worker on a virtual session."""

    def __init__(self, session: Any):
        self.s = session

    def sign(self, key: Any, data: bytes, mechanism: Any) -> bytes:
        return self.s.sign(key, data, mechanism=mechanism)

    def verify(self, key: Any, data: bytes, sig: bytes, mechanism: Any) -> bool:
        return bool(self.s.verify(key, data, sig, mechanism=mechanism))

    def encrypt(self, key: Any, data: bytes, mechanism: Any, param: Any) -> bytes:
        return self.s.encrypt(key, data, mechanism=mechanism, mechanism_param=param)

    def decrypt(self, key: Any, data: bytes, mechanism: Any, param: Any) -> bytes:
        return self.s.decrypt(key, data, mechanism=mechanism, mechanism_param=param)

    def random(self, nbytes: int) -> bytes:
        return self.s.generate_random(nbytes)


class DirectTarget:
    """One member through its own module instance, bypassing the HA layer.

    Calls into one module instance are serialised (SoftHSM2 runs without
    locking under python-pkcs11), exactly as the engine serialises them, so
    the comparison with the HA slot measures the HA layer and nothing else.
    """

    def __init__(self, engine: Any, serial: str, pin: str):
        self.name = serial
        self._serial = serial
        self._cm = engine.direct_session(serial, pin)
        self.session = self._cm.__enter__()
        self.lock = threading.Lock()
        self.calls = 0

    def find_key(self, label: str, cls: ObjectClass) -> Any | None:
        """The key when the member holds exactly one of this label."""
        found = list(self.session.get_objects({Attribute.LABEL: label, Attribute.CLASS: cls}))
        return found[0] if len(found) == 1 else None

    def discard(self, label: str, cls: ObjectClass) -> None:
        """Destroy every object of this label and class on the member."""
        for obj in list(self.session.get_objects({Attribute.LABEL: label, Attribute.CLASS: cls})):
            obj.destroy()

    def generate_key(self, key_type: KeyType, bits: int, label: str) -> Any:
        return self.session.generate_key(key_type, bits, label=label, store=True)

    def generate_keypair(self, key_type: KeyType, label: str, bits: int | None = None,
                         curve: str | None = None) -> tuple[Any, Any]:
        if key_type == KeyType.EC:
            from pkcs11.util.ec import encode_named_curve_parameters

            ec_params = encode_named_curve_parameters(curve or "secp256r1")
            params = self.session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: ec_params}, local=True)
            return params.generate_keypair(store=True, label=label)
        return self.session.generate_keypair(key_type, bits, label=label, store=True)

    @contextlib.contextmanager
    def worker(self) -> Iterator[Any]:
        yield _DirectOps(self)

    def mechanisms(self) -> set[Any]:
        return set(self.session.token.slot.get_mechanisms())

    def member_ops(self) -> dict[str, int]:
        return {self._serial: self.calls}

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class _DirectOps:
    """Operations of one worker on the member's session, one call at a time."""

    def __init__(self, target: DirectTarget):
        self.t = target

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self.t.lock:
            self.t.calls += 1
            return fn(*args, **kwargs)

    def sign(self, key: Any, data: bytes, mechanism: Any) -> bytes:
        return self._call(key.sign, data, mechanism=mechanism)

    def verify(self, key: Any, data: bytes, sig: bytes, mechanism: Any) -> bool:
        return bool(self._call(key.verify, data, sig, mechanism=mechanism))

    def encrypt(self, key: Any, data: bytes, mechanism: Any, param: Any) -> bytes:
        return self._call(key.encrypt, data, mechanism=mechanism, mechanism_param=param)

    def decrypt(self, key: Any, data: bytes, mechanism: Any, param: Any) -> bytes:
        return self._call(key.decrypt, data, mechanism=mechanism, mechanism_param=param)

    def random(self, nbytes: int) -> bytes:
        return self._call(self.t.session.generate_random, nbytes * 8)
