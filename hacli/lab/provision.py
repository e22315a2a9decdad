"""Give a lab's HA group its transport key (the SO PIN is the lab's own).

Kept apart from :mod:`hacli.lab.lab` so that managing processes never imports
the engine; ``hacli lab up`` calls this once, when it creates a lab.
"""

from __future__ import annotations

from hacli.lab.lab import Lab


def provision_lab(lab: Lab) -> dict[str, str]:
    """Set up the transport key on every member of the lab's group (idempotent).

    Returns serial -> outcome, as :func:`hacli.engine.provision_transport_key`.
    """
    from hacli.conf.model import load_config
    from hacli.conf.store import load
    from hacli.engine import provision_transport_key

    config = load_config(load(lab.conf_path), str(lab.conf_path))
    return provision_transport_key(config, lab.group_label, lab.so_pin(), lab.pin())
