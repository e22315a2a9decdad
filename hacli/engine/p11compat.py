"""python-pkcs11's cached key properties, without Python 3.11's process-wide lock.

python-pkcs11 reads some key attributes lazily through ``functools.cached_property``
(``key_type``, ``key_length``, ``id``, ``label``): the first access on a key
object calls ``C_GetAttributeValue`` on its token.  Before Python 3.12,
``cached_property`` computes under *one* lock per property -- shared by every
object of the class, so by every key of every member.  A key read on a frozen
member then holds that lock until the member's transport is cut, and a call
on a healthy member that reads ``key_type`` of a key it sees for the first
time waits behind it, past its own deadline: the watchdog cut the healthy
member too (soak finding: "engine marked member1 down with no fault on it",
at the instant a frozen member's timeout expired).

:func:`unlock_cached_properties` replaces those descriptors with one that
computes without a lock, as Python 3.12's ``cached_property`` does: two
threads reading the same key's type at once may both ask the token (the same
answer, a harmless extra call).  It runs once, when the engine is imported,
and only where the interpreter still has the lock.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import pkcs11
from pkcs11 import _pkcs11, types

_MISSING = object()


class UnlockedCachedProperty(functools.cached_property):  # type: ignore[type-arg]
    """``functools.cached_property`` without the lock (Python 3.12's behaviour)."""

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        cache = instance.__dict__
        value = cache.get(self.attrname, _MISSING)
        if value is _MISSING:
            value = self.func(instance)
            cache[self.attrname] = value
        return value


def _classes() -> list[type]:
    return [c for module in (types, _pkcs11, pkcs11) for c in vars(module).values()
            if isinstance(c, type) and c.__module__.startswith("pkcs11")]


def unlock_cached_properties() -> int:
    """Swap every locking ``cached_property`` of python-pkcs11's classes for
    :class:`UnlockedCachedProperty`; returns how many were swapped (0 on
    Python 3.12 and later, whose ``cached_property`` has no lock)."""
    if sys.version_info >= (3, 12):
        return 0
    swapped = 0
    for cls in _classes():
        for name, attr in list(vars(cls).items()):
            if type(attr) is not functools.cached_property:
                continue
            unlocked = UnlockedCachedProperty(attr.func)
            unlocked.attrname = attr.attrname
            unlocked.__doc__ = attr.__doc__
            try:
                setattr(cls, name, unlocked)
            except TypeError:  # an extension type: its dict is read-only
                continue
            swapped += 1
    return swapped


__all__ = ["UnlockedCachedProperty", "unlock_cached_properties"]
