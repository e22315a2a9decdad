"""The menu's actions, one module per menu section; importing registers them."""

from hacli.cli.menu.actions import ha, keys, lab, objects, others, security, token
from hacli.cli.menu.actions.common import ACTIONS, Ctx, MenuError

__all__ = ["ACTIONS", "Ctx", "MenuError", "ha", "keys", "lab", "objects", "others",
           "security", "token"]
