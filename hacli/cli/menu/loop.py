"""The menu loop: print the menu, read a choice, run it, print the status line.

Every failure inside an action becomes a message and CKDemo's status line with
the CKR name; Ctrl-C during an action returns to the menu; end of input or 0
quits (exit 0), Ctrl-C at the menu prompt quits as Ctrl-C ends any hacli
command (exit 130).  No traceback ever reaches the user.
"""

from __future__ import annotations

from hacli.cli.menu import screen
from hacli.cli.menu.actions import ACTIONS, Ctx, MenuError
from hacli.cli.menu.prompts import BadAnswer, Quit, parse_int
from hacli.engine.ckr import CKR
from hacli.errors import ExitStatus


def _choice(ctx: Ctx, entries: dict[int, str]) -> int:
    top = max(entries)

    def parse(text: str) -> int:
        if not text:
            raise BadAnswer("Enter the number of an option (0 quits).")
        try:
            number = parse_int(text, 0, 10**6)
        except BadAnswer:
            raise BadAnswer(f"'{text}' is not an option; enter the number of an option "
                            "(0 quits).") from None
        if number not in entries:
            raise BadAnswer(f"There is no option {number} in the menu; enter one of the "
                            f"numbers shown (0 to {top}).")
        return number

    return ctx.io.ask(screen.PROMPT, parse)


def failure(ctx: Ctx, error: BaseException) -> str:
    """Message for an action's error; returns the CKR name for the status line."""
    from hacli.engine import CKRError, ckr_name
    from hacli.errors import HacliError

    if isinstance(error, MenuError):
        ctx.say(str(error))
        return error.ckr
    if isinstance(error, CKRError):
        if ctx.state.verbose:
            ctx.say(f"({error})")
        return error.ckr
    if isinstance(error, HacliError):
        ctx.say(f"Error: {' '.join(str(error).split())}")
        return CKR.FUNCTION_FAILED
    if isinstance(error, OSError) and not type(error).__module__.startswith("pkcs11"):
        ctx.say(f"Error: {error.strerror or error}" + (f": {error.filename}"
                                                        if error.filename else ""))
        return CKR.FUNCTION_FAILED
    name = ckr_name(error)
    if name == CKR.GENERAL_ERROR:
        ctx.say(f"Internal error: {type(error).__name__}: {error}")
    return name


def run_action(ctx: Ctx, number: int, name: str) -> str:
    """Run one option; returns the CKR name for the status line."""
    if number not in ACTIONS:
        ctx.say(screen.unsupported_text(number, name))
        return CKR.FUNCTION_NOT_SUPPORTED
    try:
        return ACTIONS[number](ctx) or CKR.OK
    except (Quit, SystemExit):
        raise
    except KeyboardInterrupt:
        ctx.say("")
        ctx.say("Interrupted.")
        return CKR.FUNCTION_CANCELED
    except Exception as e:
        return failure(ctx, e)


def run(ctx: Ctx, guide: str | None = None) -> int:
    """The menu until 0 or end of input (returns 0), or Ctrl-C at the prompt
    (returns 130, :attr:`ExitStatus.INTERRUPTED`).

    ``guide``, when given, is shown once, between the first menu and the
    first prompt: the menu is 47 lines or more, so text printed before it has
    scrolled off a 24-line terminal by the time the user is asked anything.
    """
    lab = ctx.state.lab_dir is not None
    entries = screen.entries(lab)
    menu = screen.menu_lines(lab)
    status = ExitStatus.OK
    first = guide.splitlines() if guide else []
    try:
        while True:
            for line in [*menu, *first]:
                ctx.say(line)
            first = []
            try:
                number = _choice(ctx, entries)
            except KeyboardInterrupt:
                ctx.say("")
                status = ExitStatus.INTERRUPTED
                break
            if number == 0:
                break
            ctx.say(screen.status_line(run_action(ctx, number, entries[number])))
    except Quit:
        pass
    finally:
        ctx.io.flush()
        ctx.state.close()
    return int(status)
