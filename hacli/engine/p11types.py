"""Typed views of the python-pkcs11 objects the engine calls.

Annotations only (nothing here runs on a call): the values stay python-pkcs11's
own sessions and objects.  These Protocols declare the methods the engine
calls on them and what those calls return, so a value the library hands back
has a type where it enters the engine.  python-pkcs11's own annotations are
not used there: they take ``dict[Attribute, Any]`` where the engine passes
its templates (``Mapping[Any, Any]``), and ``encrypt``/``decrypt`` return
``bytes | Iterator[bytes]`` whatever the input (the engine passes ``bytes``,
and gets ``bytes``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol


class P11Session(Protocol):
    """A python-pkcs11 ``Session`` (a member connection's ``work`` session)."""

    def get_objects(self, attrs: Mapping[Any, Any] | None = None) -> Iterator[Any]: ...

    def create_object(self, attrs: Mapping[Any, Any]) -> Any: ...

    def generate_key(self, key_type: Any, key_length: int | None = None,
                     **kwargs: Any) -> Any: ...

    def generate_keypair(self, key_type: Any, key_length: int | None = None,
                         **kwargs: Any) -> tuple[Any, Any]: ...

    def digest(self, data: bytes | Iterator[bytes | P11Key], **kwargs: Any) -> bytes: ...

    def set_pin(self, old_pin: str, new_pin: str) -> None: ...

    def init_pin(self, pin: str) -> None: ...

    def generate_random(self, nbits: int) -> bytes: ...

    def seed_random(self, seed: bytes) -> None: ...


class P11Key(Protocol):
    """A python-pkcs11 key object, as the single-part calls use it (``bytes`` in,
    ``bytes`` out; verify gives a bool)."""

    def sign(self, data: bytes, **kwargs: Any) -> bytes: ...

    def verify(self, data: bytes | Iterator[bytes], signature: bytes, **kwargs: Any) -> bool: ...

    def encrypt(self, data: bytes, **kwargs: Any) -> bytes: ...

    def decrypt(self, data: bytes, **kwargs: Any) -> bytes: ...

    def wrap_key(self, key: Any, mechanism: Any = None, mechanism_param: Any = None) -> bytes: ...


__all__ = ["P11Key", "P11Session"]
