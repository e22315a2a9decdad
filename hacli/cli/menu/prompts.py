"""Reading answers: one line per answer, from a terminal or a pipe.

Every ``ask_*`` prompts, validates and asks again after a clear message until
the answer is good, so a typo never loses the menu's state.  End of input at
any prompt raises :class:`Quit` (the menu closes, exit status 0).  PINs are
read without echo from the terminal (``getpass``) or as one line from a pipe,
and never written anywhere.

When input is piped the answer is echoed after the prompt, so a scripted
session's output reads like a terminal transcript (never for PINs).

A PIN is never printed, even when it is given at a prompt that is not the PIN
prompt (piped input one line off).  The prompter knows the PINs of the session
(:meth:`Prompter.hide`: the ``--pin-file``, ``HACLI_PIN``, the lab's PIN files,
and every answer typed at a PIN prompt); an answer that is one of them, or
holds one, is echoed as ``<hidden>``, the message that rejects it quotes
``<hidden>`` (``'<hidden>' is not a slot``), and once such an answer was taken
everything printed afterwards shows ``<hidden>`` in its place (a label, a file
name).  A PIN given at an ordinary prompt before the menu knew it cannot be
recalled: in a terminal, what is typed at an ordinary prompt is echoed by the
terminal itself.
"""

from __future__ import annotations

import getpass
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")

#: What is shown instead of a PIN.
HIDDEN = "<hidden>"
#: A known PIN at least this long is also hidden inside a longer answer, and in
#: everything printed after it was given at an ordinary prompt (shorter ones
#: would hide ordinary numbers and words).
MIN_INNER = 4


class Quit(Exception):
    """End of input (or an explicit quit): leave the menu."""


class BadAnswer(ValueError):
    """An answer that does not fit the prompt; its text is shown before asking again."""


class Prompter:
    """Line-oriented input and output for the menu."""

    def __init__(self, stdin: IO[str] | None = None, stdout: IO[str] | None = None):
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.interactive = bool(self.stdin.isatty())
        #: The session's known PINs (never printed).
        self._pins: set[str] = set()
        #: Known PINs given at an ordinary prompt: hidden in everything printed.
        self._given: set[str] = set()

    # -- PINs ------------------------------------------------------------------
    def hide(self, *pins: str | None) -> None:
        """Add known PINs: no answer equal to one (or holding one) is ever shown."""
        for pin in pins:
            for form in (pin, (pin or "").strip()):
                if form:
                    self._pins.add(form)

    def pins_in(self, answer: str) -> set[str]:
        """The spellings to hide when ``answer`` is or holds a known PIN (empty: none).

        They are the PINs found and the answer itself; an answer equal to a PIN
        also hides the number it stands for (``0123456`` -> ``123456``), and an
        answer that stands for a numeric PIN is one (``4_711``, ``0x1267`` and
        ``٤٧١١`` for the PIN ``4711``).
        """
        text = answer.strip()
        if not text:
            return set()
        # a spelling of a numeric PIN is the PIN: `4_711`, `0x1267` and `٤٧١١`
        # all stand for 4711
        number = _stands_for(text)
        found = {pin for pin in self._pins
                 if text == pin or (len(pin) >= MIN_INNER and pin in answer)
                 or (number is not None and pin == str(number))}
        if found:
            found.add(text)
            if number is not None:
                found.add(str(number))
        return found

    # -- output ------------------------------------------------------------
    def say(self, text: str = "") -> None:
        self.stdout.write(redact(text, self._given) + "\n")

    def flush(self) -> None:
        self.stdout.flush()

    # -- raw input -----------------------------------------------------------
    def line(self, prompt: str) -> str:
        """One answer (stripped).  EOF -> :class:`Quit`."""
        return self._read(prompt)[0]

    def _read(self, prompt: str) -> tuple[str, set[str]]:
        """One answer (stripped) and the PIN spellings it shows (see :meth:`pins_in`).

        Piped, the answer is echoed after the prompt, or ``<hidden>`` when it is
        (or holds) a known PIN.  EOF -> :class:`Quit`.
        """
        self.stdout.write(redact(prompt, self._given))  # a default made from an answer
        self.stdout.flush()
        raw = self.stdin.readline()
        if raw == "":
            self.stdout.write("\n")
            raise Quit()
        answer = raw.rstrip("\r\n")
        pins = self.pins_in(answer)
        # what is printed with this answer later (a label, a file name) hides them
        self._given.update(p for p in pins if len(p) >= MIN_INNER)
        if not self.interactive:
            self.stdout.write((HIDDEN if pins else answer) + "\n")
        return answer.strip(), pins

    def secret(self, prompt: str) -> str:
        """A PIN: no echo on a terminal; one line from a pipe (never echoed).

        The answer becomes a known PIN (:meth:`hide`): given later at an
        ordinary prompt, it is not shown either.
        """
        if self.interactive:
            self.stdout.flush()
            try:
                pin = getpass.getpass(prompt)
            except EOFError:
                raise Quit() from None
        else:
            self.stdout.write(prompt)
            self.stdout.flush()
            raw = self.stdin.readline()
            self.stdout.write("\n")
            if raw == "":
                raise Quit()
            pin = raw.rstrip("\r\n")
        self.hide(pin)
        return pin

    # -- validated answers -----------------------------------------------------
    def ask(self, prompt: str, parse: Callable[[str], T], default: str | None = None) -> T:
        """Ask until ``parse`` accepts the answer (empty answer -> ``default``)."""
        shown = f"{prompt} [{default}]: " if default not in (None, "") else f"{prompt}: "
        while True:
            answer, pins = self._read(shown)
            if answer == "" and default is not None:
                answer = default
            try:
                return parse(answer)
            except BadAnswer as e:
                # the message may quote the answer: never a PIN, however short
                self.say(redact(str(e), pins))

    def ask_int(self, prompt: str, low: int, high: int, default: int | None = None) -> int:
        def parse(text: str) -> int:
            return parse_int(text, low, high)

        return self.ask(prompt, parse, None if default is None else str(default))

    def ask_choice(self, title: str, options: Sequence[str], prompt: str = "Select",
                   default: int | None = 1) -> int:
        """A numbered list; returns the 0-based index of the choice."""
        self.say(title)
        for i, text in enumerate(options, 1):
            self.say(f"  {i} - {text}")
        return self.ask_int(prompt, 1, len(options), default) - 1

    def ask_yes_no(self, prompt: str, default: bool = False) -> bool:
        def parse(text: str) -> bool:
            low = text.lower()
            if low in ("y", "yes", "1"):
                return True
            if low in ("n", "no", "0"):
                return False
            raise BadAnswer("Answer y or n.")

        return self.ask(f"{prompt} (y/n)", parse, "y" if default else "n")

    def ask_text(self, prompt: str, default: str | None = None,
                 allow_empty: bool = False) -> str:
        def parse(text: str) -> str:
            if not text and not allow_empty:
                raise BadAnswer("An answer is needed here.")
            return text

        return self.ask(prompt, parse, default)

    def ask_file(self, prompt: str, default: str | None = None) -> Path:
        """An existing, readable file."""
        return self.ask(prompt, existing_file, default)

    def ask_output_file(self, prompt: str, default: str | None = None) -> Path:
        """A file that can be written (its directory exists; not a directory)."""
        return self.ask(prompt, writable_file, default)

    def ask_optional_file(self, prompt: str, output: bool = False) -> Path | None:
        """A file name, or None for an empty answer."""
        check = writable_file if output else existing_file
        return self.ask(prompt, lambda text: check(text) if text else None, "")

    def ask_hex(self, prompt: str, default: str | None = None) -> bytes:
        return self.ask(prompt, parse_hex, default)


def _word(text: str) -> re.Pattern[str]:
    """``text`` standing alone: not inside a longer run of letters and digits."""
    before = r"(?<![0-9A-Za-z])" if text[:1].isalnum() else ""
    after = r"(?![0-9A-Za-z])" if text[-1:].isalnum() else ""
    return re.compile(before + re.escape(text) + after)


def redact(text: str, pins: set[str]) -> str:
    """``text`` with ``pins`` shown as ``<hidden>``: wherever they occur when
    at least :data:`MIN_INNER` long (a part of an answer that holds the PIN,
    ``No such directory: 04711-secret``, shows it inside a longer word), else
    where they stand alone (a short PIN would hide ordinary numbers).

    Longest first, so a PIN inside a longer hidden spelling goes with it.
    """
    for pin in sorted(pins, key=len, reverse=True):
        text = text.replace(pin, HIDDEN) if len(pin) >= MIN_INNER else _word(pin).sub(HIDDEN, text)
    return text


# -- parsers (pure; each raises BadAnswer with the message to show) --------------
#: What a number prompt takes: ASCII decimal digits, or hex after ``0x``
#: (not Python's wider ``int()``, which also reads ``4_711`` and ``٤٧١١``)
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]+", re.ASCII)


#: More digits than any prompt's range has: read as "too large", not converted
#: (Python refuses to convert more than 4300 digits at all).
_MAX_DIGITS = 64


def _number(text: str) -> int | None:
    """``text`` as a number prompt reads it (decimal, or hex after ``0x``); None if not one."""
    if not _NUMBER.fullmatch(text):
        return None
    if len(text.lstrip("0xX")) > _MAX_DIGITS:
        return 16 ** _MAX_DIGITS  # out of every prompt's range, however it is spelt
    return int(text, 16) if text[:2].lower() == "0x" else int(text)


def _stands_for(text: str) -> int | None:
    """The number ``text`` could be taken for by anyone's reading (``int()``'s wide one)."""
    if len(text) > _MAX_DIGITS * 2:  # no PIN is that long; int() may refuse it
        return None
    try:
        return int(text, 0) if text[:2].lower() == "0x" else int(text)
    except ValueError:
        return None


def parse_int(text: str, low: int, high: int) -> int:
    """A number from ``low`` to ``high``; the messages quote the answer as typed
    (never a re-formatted value, which could spell a PIN the answer does not)."""
    value = _number(text)
    if value is None:
        raise BadAnswer(f"'{text}' is not a number; enter a number from {low} to {high}.")
    if not low <= value <= high:
        raise BadAnswer(f"{text} is out of range; enter a number from {low} to {high}.")
    return value


def _path(text: str) -> Path:
    """``text`` as a path, ``~`` and ``~user`` expanded."""
    if not text:
        raise BadAnswer("Enter a file name.")
    if "\0" in text:  # the system cannot even look such a name up
        raise BadAnswer("A file name cannot contain a NUL character.")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~user of no such user, or no home directory
        raise BadAnswer(f"Cannot find the home directory in {text}") from None


def _cannot(verb: str, text: str, e: OSError) -> BadAnswer:
    """A file the system refuses to look at (name too long, no permission): ask again."""
    return BadAnswer(f"Cannot {verb} {text}: {e.strerror or e}")


def existing_file(text: str) -> Path:
    path = _path(text)
    try:
        if not path.exists():
            raise BadAnswer(f"No such file: {text}")
        if not path.is_file():
            raise BadAnswer(f"Not a regular file: {text}")
        with path.open("rb"):
            pass
    except OSError as e:
        raise _cannot("read", text, e) from None
    return path


def writable_file(text: str) -> Path:
    path = _path(text)
    try:
        if path.is_dir():
            raise BadAnswer(f"{text} is a directory; enter a file name.")
        if not path.parent.is_dir():
            raise BadAnswer(f"No such directory: {path.parent}")
    except OSError as e:
        raise _cannot("write", text, e) from None
    return path


def parse_hex(text: str) -> bytes:
    cleaned = text.replace(" ", "").replace(":", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise BadAnswer(f"'{text}' is not hexadecimal (e.g. 0a1b2c).") from None
