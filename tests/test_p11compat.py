"""python-pkcs11's lazily read key attributes share no lock across keys (p11compat)."""

from __future__ import annotations

import functools
import sys
import threading

from pkcs11 import _pkcs11, types

import hacli.engine  # noqa: F401  (importing the engine swaps the descriptors)
from hacli.engine.p11compat import UnlockedCachedProperty


def test_no_python_pkcs11_class_keeps_a_locking_cached_property() -> None:
    left = [f"{cls.__name__}.{name}" for module in (types, _pkcs11)
            for cls in vars(module).values() if isinstance(cls, type)
            for name, attr in vars(cls).items()
            if type(attr) is functools.cached_property]
    if sys.version_info < (3, 12):
        assert left == []
    assert isinstance(vars(types.HasKeyType)["key_type"], UnlockedCachedProperty)


class Key:
    """Stands in for a python-pkcs11 key: reading its type may block (a frozen member)."""

    def __init__(self, gate: threading.Event | None) -> None:
        self.gate = gate
        self.reads = 0

    @UnlockedCachedProperty
    def key_type(self) -> str:
        self.reads += 1
        if self.gate is not None:
            assert self.gate.wait(10)
        return "AES"


def test_a_blocked_read_of_one_key_does_not_hold_another() -> None:
    gate = threading.Event()
    frozen, healthy = Key(gate), Key(None)
    reader = threading.Thread(target=lambda: frozen.key_type, daemon=True)
    reader.start()
    try:
        done = threading.Event()
        other = threading.Thread(target=lambda: (healthy.key_type, done.set()), daemon=True)
        other.start()
        assert done.wait(5)  # with functools' lock (Python 3.11) it waits for the gate
    finally:
        gate.set()
        reader.join(5)
    assert frozen.key_type == healthy.key_type == "AES"
    assert frozen.reads == healthy.reads == 1  # cached after the first read
