"""The one table from exceptions to messages and exit codes.

The entry point (:func:`hacli.cli.main.main`) hands whatever ends a command
here: it becomes one ``Error: ...`` line on stderr and an
:class:`~hacli.errors.ExitStatus`, never a traceback.  Ctrl-C is no error: it
ends the command with 130 and no message (the terminal showed ``^C``), also
while click prompts for input (click turns it into ``Abort``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from hacli.errors import (
    ConfError,
    ConfValueError,
    EngineError,
    ExitStatus,
    HacliError,
    LabError,
    UsageError,
)


def _pkcs11_message(exc: BaseException) -> str:
    # python-pkcs11 exceptions carry no text; the CKR name is the message.
    from hacli.engine.ckr import ckr_name, explain

    name = ckr_name(exc)
    return f"{name}: {explain(name)}"


def _is_pkcs11(exc: BaseException) -> bool:
    mod = sys.modules.get("pkcs11.exceptions")
    return mod is not None and isinstance(exc, mod.PKCS11Error)


def _os_message(e: BaseException) -> str:
    assert isinstance(e, OSError)
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


def interrupted(exc: BaseException) -> bool:
    """True for Ctrl-C: ``KeyboardInterrupt``, or click's ``Abort`` raised for one
    (click.prompt and click's main wrap it; the interrupt stays the context)."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, KeyboardInterrupt):
            return True
        if not isinstance(current, click.exceptions.Abort):
            return False
        current = current.__cause__ or current.__context__
    return False


def _aborted(e: BaseException) -> str:
    # an Abort that is not Ctrl-C: end of input at a prompt (Ctrl-D), or a
    # confirmation answered no
    if isinstance(e.__cause__ or e.__context__, EOFError):
        return "no answer: end of input at a prompt"
    return "aborted"


#: (exception classes, exit status, message builder); the first match wins.
#: PKCS#11 errors are matched by :func:`_is_pkcs11` so that python-pkcs11 is
#: never imported just to report an error.
TABLE: list[tuple[tuple[type[BaseException], ...], ExitStatus, Callable[[BaseException], str]]] = [
    ((click.UsageError,), ExitStatus.USAGE, lambda e: _click_usage(e)),  # type: ignore[arg-type]
    ((UsageError, ConfValueError), ExitStatus.USAGE, str),
    ((ConfError, LabError, EngineError, HacliError), ExitStatus.FAILED, str),
    ((click.ClickException,), ExitStatus.FAILED, lambda e: e.format_message()),  # type: ignore[attr-defined]
    ((click.exceptions.Abort,), ExitStatus.FAILED, _aborted),
    ((OSError,), ExitStatus.FAILED, _os_message),
]


def _click_usage(e: click.UsageError) -> str:
    hint = ""
    if e.ctx is not None:
        hint = f" (see '{e.ctx.command_path} --help')"
    return f"{e.format_message()}{hint}"


def classify(exc: BaseException) -> tuple[ExitStatus, str]:
    """The exit status and one-line message for an exception."""
    if _is_pkcs11(exc):
        return ExitStatus.FAILED, _pkcs11_message(exc)
    for classes, status, message in TABLE:
        if isinstance(exc, classes):
            return status, " ".join(message(exc).split()) or type(exc).__name__
    return ExitStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}"


def report(exc: BaseException) -> ExitStatus:
    """Print the one ``Error:`` line for ``exc`` and return its exit status
    (Ctrl-C: nothing printed, :attr:`ExitStatus.INTERRUPTED`)."""
    if interrupted(exc):
        return ExitStatus.INTERRUPTED
    status, text = classify(exc)
    click.echo(f"Error: {text}", err=True)
    return status
