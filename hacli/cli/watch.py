"""``hacli ha status --watch``: a live view on a terminal, a line per state change elsewhere.

The messages come from a feed (:mod:`hacli.metrics.watch`): an engine in this
process, probed every interval, or a running ``hacli serve``'s status socket,
asked for a snapshot every interval.  On a terminal a rich ``Live`` table is
redrawn at each snapshot; operations per second are the change of a member's
call count between two snapshots.  Not on a terminal, every member's state is
printed once, then one line per state change (``--json``: one JSON object),
flushed at once, so the output can feed a log or a monitor.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import click

from hacli.engine.member import SERVING_STATES, MemberState
from hacli.errors import HacliError
from hacli.metrics.watch import CHANGE, END, SNAPSHOT, Message, epoch, initial_changes

#: The member states as the messages spell them (hacli.engine.member's table).
ALIVE, DOWN = MemberState.ALIVE.value, MemberState.DOWN.value
SERVING = frozenset(s.value for s in SERVING_STATES)


class Feed(Protocol):
    """Where the watcher's messages come from (hacli.metrics.watch)."""

    def refresh(self) -> None: ...

    def next(self, timeout: float) -> Message | None: ...

    def close(self) -> None: ...


def change_line(msg: Message) -> str:
    """A change as one text line: time, group, member, ``from -> to``, reason."""
    old = msg["from"] or "-"
    reason = f" {msg['reason']}" if msg["reason"] and msg["to"] == DOWN else ""
    return f"{msg['time']} {msg['group']} {msg['member']} {old} -> {msg['to']}{reason}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _in(seconds: float | None) -> str:
    return "-" if seconds is None else ("due" if seconds <= 0 else f"in {_ago(seconds)}")


class LiveView:
    """The rich table, redrawn from the last snapshot (and changes since)."""

    def __init__(self) -> None:
        self._snap: Message | None = None
        # (group, member) -> (calls, monotonic time) of the previous snapshot
        self._calls: dict[tuple[str, str], tuple[int, float]] = {}
        self._rates: dict[tuple[str, str], float] = {}

    def update(self, msg: Message) -> None:
        if msg["type"] == SNAPSHOT:
            now = time.monotonic()
            for g in msg["groups"]:
                for m in g["members"]:
                    key = (g["label"], m["serial"])
                    before = self._calls.get(key)
                    if before is not None and now > before[1]:
                        self._rates[key] = max(0, m["calls"] - before[0]) / (now - before[1])
                    self._calls[key] = (m["calls"], now)
            self._snap = msg
        elif msg["type"] == CHANGE and self._snap is not None:
            for g in self._snap["groups"]:
                for m in g["members"]:
                    if g["label"] == msg["group"] and m["serial"] == msg["member"]:
                        if msg["to"] == DOWN and m["alive"]:
                            m["last_failure"] = msg["time"]
                        m.update(state=msg["to"], since=msg["time"],
                                 alive=msg["to"] in SERVING,
                                 attempts_used=msg["attempts_used"],
                                 attempts_left=msg["attempts_left"],
                                 next_attempt=msg["next_attempt"])

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        if self._snap is None:
            return Text("waiting for the first snapshot ...")
        now = time.time()
        tables: list[Any] = []
        for g in self._snap["groups"]:
            t = Table(title=f"HA group {g['serial']} ({g['label']})", title_justify="left")
            # a serial is never cut short: the other columns wrap first
            t.add_column("Member", no_wrap=True,
                         min_width=max((len(m["serial"]) for m in g["members"]), default=6))
            for col in ("State", "In flight", "Ops/s", "Since failure",
                        "Attempts used", "Attempts left", "Next attempt"):
                t.add_column(col)
            for m in g["members"]:
                last = epoch(m["last_failure"])
                nxt = epoch(m["next_attempt"])
                down = not m["alive"]
                left = m["attempts_left"]
                t.add_row(
                    m["serial"],
                    Text(m["state"], style="green" if m["state"] == ALIVE else "red"),
                    str(m["in_flight"]),
                    f"{self._rates.get((g['label'], m['serial']), 0.0):.1f}",
                    _ago(None if last is None else now - last),
                    str(m["attempts_used"]) if down and m["attempts_used"] is not None else "-",
                    ("unlimited" if left is None else str(left)) if down else "-",
                    _in(None if nxt is None else nxt - now) if down else "-")
            tables.append(t)
        stamp = Text(f"{self._snap['time']}  (Ctrl-C ends)", style="dim")
        return Group(*tables, stamp)


def watch(feed: Feed, interval: float, as_json: bool) -> None:
    """Run until Ctrl-C (KeyboardInterrupt: exit 130 by the entry point) or
    until the feed ends (a serve that stopped: an error)."""
    tty = sys.stdout.isatty()
    view = LiveView()
    started = False

    def lines(msgs: list[Message]) -> None:
        for m in msgs:
            click.echo(json.dumps(m) if as_json else change_line(m))
        sys.stdout.flush()

    def pump(on_message: Callable[[Message], None]) -> None:
        feed.refresh()
        deadline = time.monotonic() + interval
        while True:
            msg = feed.next(deadline - time.monotonic())
            if msg is None:
                feed.refresh()
                deadline = time.monotonic() + interval
                continue
            if msg.get("type") == END:
                raise HacliError("the status socket closed: hacli serve stopped")
            on_message(msg)

    try:
        if tty and not as_json:
            from rich.live import Live

            with Live(view.render(), auto_refresh=False, transient=False) as live:
                def redraw(msg: Message) -> None:
                    view.update(msg)
                    live.update(view.render(), refresh=True)

                pump(redraw)
        else:
            def emit(msg: Message) -> None:
                nonlocal started
                if msg["type"] == SNAPSHOT and not started:
                    started = True
                    lines(initial_changes(msg))
                elif msg["type"] == CHANGE and started:
                    lines([msg])

            pump(emit)
    finally:
        feed.close()


__all__ = ["Feed", "LiveView", "change_line", "watch"]
