"""The configspec (``ha.spec``) as an API: types, ranges, defaults and help.

configobj's ``validate`` module does the checking; the custom checks below add
Luna's spellings (``unlimited`` for -1, ``0``/``1`` flags, the interval's Luna
range).  Everything that knows a setting's type or default asks this module.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from typing import Protocol, TypeAlias

from hacli.errors import ConfValueError

RETRY_WORDS = ("unlimited", "infinite")
MAX_RETRY_COUNT = 500

#: A setting's typed value: ``integer``, ``retry_count`` and ``interval`` give an
#: int, ``flag`` a bool, ``option`` and ``string`` a str.
SettingValue: TypeAlias = int | bool | str


class _Validator(Protocol):
    """The part of configobj's ``validate.Validator`` this module uses.

    ``validate`` has no type information; these are the types it gives for the
    checks ``ha.spec`` uses (no list or ``None`` arguments or defaults).
    """

    def check(self, check: str, value: str) -> SettingValue: ...

    def get_default_value(self, check: str) -> SettingValue: ...

    def _parse_with_caching(
        self, check: str
    ) -> tuple[str, list[str], dict[str, str], str | None]: ...


@dataclass(frozen=True)
class Setting:
    """One key of the spec: its canonical spelling, check string and help."""

    section: str
    key: str
    check: str
    help: str

    @property
    def default(self) -> SettingValue:
        """The typed default value."""
        return _validator().get_default_value(self.check)

    @property
    def default_text(self) -> str:
        """The default as a file writes it (``0`` for a flag, not ``False``)."""
        default = _validator()._parse_with_caching(self.check)[3]
        return "" if default is None else default

    @property
    def allowed(self) -> str:
        """The allowed values in words, for error messages."""
        name, args, kwargs, _default = _validator()._parse_with_caching(self.check)
        if name == "retry_count":
            return f"-1 (or {'/'.join(RETRY_WORDS)}) = forever, 0 = off, 1..{MAX_RETRY_COUNT}"
        if name == "interval":
            return (
                f"seconds, {kwargs['min']}..{kwargs['max']} "
                f"(Luna clients: {kwargs['luna_min']}..{kwargs['luna_max']})"
            )
        if name == "integer":
            return f"an integer {kwargs.get('min', '')}..{kwargs.get('max', '')}"
        if name == "option":
            return " or ".join(args)
        if name == "flag":
            return "0 or 1"
        return "a string"


def _retry_count(value: object) -> int:
    text = str(value).strip().lower()
    if text in RETRY_WORDS:
        return -1
    try:
        n = int(text)
    except ValueError:
        raise _fail("not a number") from None
    if n < -1 or n > MAX_RETRY_COUNT:
        raise _fail("out of range")
    return n


def _interval(value: object, min: str, max: str, luna_min: str, luna_max: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise _fail("not a number") from None
    if not int(min) <= n <= int(max):
        raise _fail("out of range")
    return n


def _flag(value: object) -> bool:
    # Only 0 and 1: a Luna client reads these flags as numbers, so "yes" would
    # mean 0 to it and 1 to hacli.
    text = str(value).strip()
    if text in ("0", "1"):
        return text == "1"
    raise _fail("not a flag")


def _fail(reason: str) -> Exception:
    from validate import VdtValueError

    # validate is untyped; VdtValueError is its ValidateError (an Exception) for bad values.
    error: Exception = VdtValueError(reason)
    return error


@functools.cache
def _validator() -> _Validator:
    from validate import Validator

    # validate is untyped: the annotation is where its Validator gets a type.
    validator: _Validator = Validator(
        {"retry_count": _retry_count, "interval": _interval, "flag": _flag}
    )
    return validator


#: configobj's name for "any other key of this section" in a configspec.
MANY = "__many__"


@functools.cache
def _entries() -> tuple[Setting, ...]:
    """Every entry of the spec, in spec order, ``__many__`` patterns included."""
    from configobj import ConfigObj

    text = resources.files("hacli.conf").joinpath("ha.spec").read_text(encoding="utf-8")
    # configobj is untyped; with list_values=False every name and value is a str.
    spec = ConfigObj(text.splitlines(), _inspec=True, list_values=False)
    out: list[Setting] = []
    for section in spec.sections:
        sec = spec[section]
        for key in sec.scalars:
            check: str = sec[key]
            comments: list[str] = sec.comments.get(key, [])
            help_text = " ".join(c.lstrip("# ").strip() for c in comments)
            out.append(Setting(section, key, check, help_text))
    return tuple(out)


def settings() -> tuple[Setting, ...]:
    """Every named setting of the spec, in spec order (no ``__many__`` pattern)."""
    return tuple(s for s in _entries() if s.key != MANY)


def lookup(section: str, key: str) -> Setting | None:
    """The spec entry for ``section``/``key`` (case-insensitive), or None.

    A key of a section whose spec has a ``__many__`` pattern (``HASynchronize``:
    one flag per group label) gets that pattern's check under its own name.
    """
    pattern = None
    for s in _entries():
        if s.section.lower() != section.lower():
            continue
        if s.key == MANY:
            pattern = s
        elif s.key.lower() == key.lower():
            return s
    return dataclasses.replace(pattern, key=key) if pattern is not None else None


def spec_sections() -> list[str]:
    """Section names the spec knows, canonical spelling."""
    return list(dict.fromkeys(s.section for s in _entries()))


def convert(section: str, key: str, value: str, *, where: str = "") -> SettingValue:
    """Check ``value`` against the spec and return it typed.

    Raises :class:`ConfValueError` naming ``where`` (file:line), the section,
    the key and the allowed values.
    """
    from validate import ValidateError

    setting = lookup(section, key)
    if setting is None:
        return value
    try:
        return _validator().check(setting.check, value)
    except ValidateError:
        prefix = f"{where}: " if where else ""
        raise ConfValueError(
            f"{prefix}[{setting.section}] {setting.key} = {value!r} is invalid; "
            f"allowed: {setting.allowed}"
        ) from None


def outside_luna(section: str, key: str, value: SettingValue) -> str | None:
    """Why a valid value is outside what Luna clients accept, or None.

    Only checks with ``luna_min``/``luna_max`` (the interval) have such a
    range: hacli honours the value, a Luna client does not.  Write commands
    refuse it unless ``--force`` is given; ``conf check`` warns.
    """
    setting = lookup(section, key)
    if setting is None or isinstance(value, bool) or not isinstance(value, int):
        return None
    _n, _a, kwargs, _d = _validator()._parse_with_caching(setting.check)
    if "luna_min" not in kwargs:
        return None
    lo, hi = int(kwargs["luna_min"]), int(kwargs["luna_max"])
    if lo <= value <= hi:
        return None
    return (f"[{setting.section}] {setting.key} = {value} is outside Luna's {lo}..{hi} s; "
            f"Luna clients need at least {lo}")
