"""``hacli serve``: the HA virtual slots over p11-kit's RPC protocol, for any application."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from hacli.cli.context import app
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.engine import Engine
    from hacli.metrics.prometheus import Source
    from hacli.serve.server import Server

LOG = logging.getLogger("hacli.serve")


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


@contextlib.contextmanager
def metrics_endpoint(port: int | None, address: str, source: Source) -> Iterator[str | None]:
    """prometheus-client's HTTP server for the block (none without a port);
    yields its URL.  Listening is tried before the engine starts, so a port in
    use is one Error line and nothing else."""
    if port is None:
        yield None
        return
    from hacli.metrics.prometheus import serve_http

    try:
        http, _thread = serve_http(source, port, address)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"--metrics-port: cannot listen on {address} port {port}: "
                         f"{reason}") from e
    try:
        host = f"[{address}]" if ":" in address else address  # an IPv6 address
        yield f"http://{host}:{http.server_port}/metrics"
    finally:
        http.shutdown()
        http.server_close()


@contextlib.contextmanager
def status_socket(engine: Engine, path: Path) -> Iterator[None]:
    """The status socket ``PATH.status`` for the block."""
    from hacli.serve.status import StatusServer

    watchers = StatusServer(engine, path)
    watchers.start()
    try:
        yield
    finally:
        watchers.stop()


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
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics over HTTP on this port (0: any free port; "
                   "the address is logged).")
@click.option("--metrics-address", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address the metrics endpoint listens on (loopback by default).")
def serve(socket_path: str, groups: tuple[str, ...], members: bool,
          allow_uids: tuple[int, ...], json_log: bool, metrics_port: int | None,
          metrics_address: str) -> None:
    """Serve the HA virtual slots to any PKCS#11 application through p11-kit-client.so.

    Once listening, prints the line to evaluate in a shell, as `p11-kit server` does:
    \b
      P11_KIT_SERVER_ADDRESS=unix:path=PATH; export P11_KIT_SERVER_ADDRESS;
    Then load p11-kit-client.so in the application.  SIGTERM or SIGINT end it:
    calls in progress finish, the socket is removed, exit 0.  A status socket
    PATH.status (0600, JSON lines) feeds `hacli ha status --watch --socket
    PATH.status`; --metrics-port serves Prometheus metrics.
    """
    from hacli.engine import Engine
    from hacli.serve.calls import Service
    from hacli.serve.server import Server, check_socket_path
    from hacli.serve.status import status_path

    config = app().config()
    known = [g.label for g in config.groups]
    if not known:
        raise UsageError(f"no HA groups are configured in {app().path}")
    for label in groups:
        if label not in known:
            raise UsageError(f"--group: no HA group {label!r} (groups: {', '.join(known)})")
    if metrics_port is None and metrics_address != "127.0.0.1":
        raise UsageError("--metrics-address needs --metrics-port")
    # bad input is refused before the engine starts (and logs): one Error line, nothing else
    main_path = Path(socket_path).absolute()
    check_socket_path(main_path)
    check_socket_path(status_path(main_path))
    engines: list[Engine] = []  # the scrape's source, once the engine is up
    with metrics_endpoint(metrics_port, metrics_address,
                          lambda: [mm for e in engines for mm in e.metrics()]) as url:
        setup_logging(json_log)
        if url is not None:
            LOG.info("metrics at %s", url)
        with Engine(config, groups=list(groups) or None) as engine, \
                status_socket(engine, status_path(main_path)):
            engines.append(engine)
            run_server(Server(Service(engine, members=members), socket_path, allow_uids))


def run_server(server: Server) -> None:
    """Listen, print the address line, serve until SIGTERM or SIGINT."""
    server.listen()

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"P11_KIT_SERVER_ADDRESS={server.address}; export P11_KIT_SERVER_ADDRESS;")
    sys.stdout.flush()
    server.serve_forever()
