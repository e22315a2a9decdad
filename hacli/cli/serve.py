"""``hacli serve``: the HA virtual slots over p11-kit's RPC protocol, for any application."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import click

from hacli.cli.context import app
from hacli.errors import UsageError


class JSONLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z",
                                                 time.localtime(record.created)),
                           "level": record.levelname.lower(), "source": record.name,
                           "message": record.getMessage()})


def setup_logging(as_json: bool) -> None:
    """Connections (hacli.serve) and HA events (hacli.engine's member transitions) on
    stderr, one line each.  Neither logger is ever given a PIN."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLines() if as_json else
                         logging.Formatter("hacli serve: %(message)s"))
    for name, level in (("hacli.serve", logging.INFO), ("hacli.engine", logging.DEBUG)):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False


@click.command()
@click.option("--socket", "socket_path", required=True, metavar="PATH",
              type=click.Path(dir_okay=False),
              help="Unix socket to create (mode 0600; its directory writable by you alone).")
@click.option("--group", "groups", multiple=True, metavar="LABEL",
              help="Serve this HA group (repeatable; default: every group).")
@click.option("--members", is_flag=True,
              help="Also expose the member slots (\"Member Slot\", as in the menu; "
                   "HAOnly hides them).")
@click.option("--allow-uid", "allow_uids", multiple=True, type=click.IntRange(0),
              metavar="UID", help="Also admit this user (repeatable; the socket becomes "
                                  "0666 and SO_PEERCRED decides).")
@click.option("--json-log", is_flag=True, help="Log JSON lines on stderr.")
def serve(socket_path: str, groups: tuple[str, ...], members: bool,
          allow_uids: tuple[int, ...], json_log: bool) -> None:
    """Serve the HA virtual slots to any PKCS#11 application through p11-kit-client.so.

    Once listening, prints the line to evaluate in a shell, as `p11-kit server` does:
    \b
      P11_KIT_SERVER_ADDRESS=unix:path=PATH; export P11_KIT_SERVER_ADDRESS;
    Then load p11-kit-client.so in the application.  SIGTERM or SIGINT end it:
    calls in progress finish, the socket is removed, exit 0.
    """
    from hacli.engine import Engine
    from hacli.serve.calls import Service
    from hacli.serve.server import Server, check_socket_path

    config = app().config()
    known = [g.label for g in config.groups]
    if not known:
        raise UsageError(f"no HA groups are configured in {app().path}")
    for label in groups:
        if label not in known:
            raise UsageError(f"--group: no HA group {label!r} (groups: {', '.join(known)})")
    # bad input is refused before the engine starts (and logs): one Error line, nothing else
    check_socket_path(Path(socket_path).absolute())
    setup_logging(json_log)
    with Engine(config, groups=list(groups) or None) as engine:
        server = Server(Service(engine, members=members), socket_path, allow_uids)
        server.listen()

        def stop(signum: int, frame: FrameType | None) -> None:
            server.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        click.echo(f"P11_KIT_SERVER_ADDRESS={server.address}; export P11_KIT_SERVER_ADDRESS;")
        sys.stdout.flush()
        server.serve_forever()
