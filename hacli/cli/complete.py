"""Shell completion of values read from the configuration: group labels, member
serials, and the labels of keys anyone may see.

click calls these at completion time (``_HACLI_COMPLETE``, see completions/),
with the command line parsed so far but no command run: the configuration
file is found from ``--conf`` (before or after the subcommand) or
``$HACLI_CONF`` as a command would find it.  Any problem gives no
suggestions, never an error on the user's terminal.

Key labels are those of public objects (public keys; secret keys are private
objects): listing them needs no PIN.  It connects to the group's members, a
few hundred milliseconds on the lab, bounded by the command timeout
(``ReceiveTimeout``) for a member that does not answer.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

from hacli.cli.context import AppContext

if TYPE_CHECKING:
    from hacli.conf.model_types import HAConfig


def _config(ctx: click.Context) -> HAConfig | None:
    conf: str | None = None
    obj = ctx.find_object(AppContext)
    if obj is not None:
        conf = obj.conf_option
    node: click.Context | None = ctx
    while conf is None and node is not None:
        value = node.params.get("conf_path")
        conf = value if isinstance(value, str) else None
        node = node.parent
    try:
        return AppContext(conf_option=conf).config()
    except Exception:  # no file, an unreadable one: nothing to suggest
        return None


def _matching(items: list[tuple[str, str]], incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(value, help=help) for value, help in items
            if value.lower().startswith(incomplete.lower())]


def groups(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Labels of the configured HA groups."""
    config = _config(ctx)
    if config is None:
        return []
    return _matching([(g.label, f"HA group, serial {g.serial}") for g in config.groups],
                     incomplete)


def slots(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """``ha`` and the serials of the configured members."""
    config = _config(ctx)
    if config is None:
        return []
    items = [("ha", "the HA virtual slot")]
    items += [(m, f"member of {g.label}") for g in config.groups for m in g.members]
    return _matching(items, incomplete)


def keys(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Labels of the public keys on the group's HA slot (``--group``, else the first)."""
    config = _config(ctx)
    if config is None or not config.groups:
        return []
    label = ctx.params.get("group") or config.groups[0].label
    labels: set[str] = set()
    with contextlib.suppress(Exception):  # a member or group down: no suggestions
        from pkcs11 import Attribute, ObjectClass

        from hacli.engine import Engine

        with Engine(config, groups=[str(label)]) as engine, \
                engine.group(str(label)).open_session(rw=False) as session:
            found = session.find_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY})
            labels = {str(session.get_attribute(h, Attribute.LABEL)) for h in found}
    return _matching([(name, "public key") for name in sorted(labels) if name], incomplete)


__all__ = ["groups", "keys", "slots"]
