"""``ha status --watch`` in a real pty and through a pipe, and a running
``hacli serve`` observed from outside: its metrics endpoint scraped with a real
HTTP client (urllib) and its status socket watched, while real clients call
through p11-kit-client and a lab member is crashed.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pexpect
import pytest
from clihelpers import HACLI
from test_obs_lab import samples, value
from test_serve_lab import python_client, start_serve, stop_serve, wait_log

from hacli.lab import Lab

pytestmark = pytest.mark.lab


class Watcher:
    """``hacli ARGS`` with its stdout read line by line in a thread (a
    selector on a buffered pipe would miss lines already read ahead)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([HACLI, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next_line(self, want: str, timeout: float = 60) -> str:
        """The next line matching the regex ``want``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if re.search(want, line):
                return line
        raise AssertionError(f"no line matching {want!r}")

    def interrupt(self) -> str:
        """Ctrl-C: exit 130, no traceback; returns stderr."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=60) == 130
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        assert "Traceback" not in err
        return err


def test_watch_through_a_pipe_prints_a_line_per_state_change(healthy_lab: Lab) -> None:
    m0, m1 = (m.serial for m in healthy_lab.members())
    w = Watcher("--conf", str(healthy_lab.conf_path), "ha", "status", "--watch",
                "--interval", "0.2")
    try:
        label = healthy_lab.group_label
        w.next_line(rf"Z {label} {m0} - -> alive$")
        w.next_line(rf"Z {label} {m1} - -> alive$")
        healthy_lab.fail(m0)
        w.next_line(rf"Z {label} {m0} alive -> down CKR_\w+$")
    finally:
        err = w.interrupt()
    assert err.strip() == "", err  # click ends a Ctrl-C with a newline on stderr


def test_watch_in_a_pty_shows_the_live_view(healthy_lab: Lab) -> None:
    m0, m1 = (m.serial for m in healthy_lab.members())
    child = pexpect.spawn(HACLI, ["--conf", str(healthy_lab.conf_path), "ha", "status",
                                  "--watch", "--interval", "0.2"],
                          encoding="utf-8", timeout=20, dimensions=(40, 200),
                          # the pty's size, not one inherited from the test run
                          env={k: v for k, v in os.environ.items()
                               if k not in ("COLUMNS", "LINES")})
    try:
        child.expect(rf"{m1}[^\n]*alive")
        child.expect_exact("Ops/s")
        healthy_lab.fail(m1)
        # the view redrawn with the member down: recovery attempts, unlimited (reconnAtt -1)
        child.expect(rf"{m1}[^\n]*down[^\n]*unlimited")
        child.expect_exact(m0)
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 130
    assert "Traceback" not in (child.before or "")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(r.read().decode())


def test_a_running_serve_is_scraped_and_watched(healthy_lab: Lab, tmp_path: Path) -> None:
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    label = lab.group_label
    s = start_serve(lab, tmp_path / "run", "--metrics-port", "0")
    status = s.socket.with_name(s.socket.name + ".status")
    w = None
    try:
        url = wait_log(s, "metrics at").split("metrics at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")  # loopback by default
        assert stat.S_IMODE(status.stat().st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(30)
            raw.connect(str(status))
            lines = raw.makefile("rb")
            snap = json.loads(lines.readline())  # a snapshot on connect
            assert snap["type"] == "snapshot" and snap["time"].endswith("Z")
            (group,) = snap["groups"]
            assert group["label"] == label
            assert [m["serial"] for m in group["members"]] == [m0, m1]
            assert {m["state"] for m in group["members"]} == {"alive"}
            raw.sendall(b"\n")  # and another for every line the watcher writes
            assert json.loads(lines.readline())["type"] == "snapshot"
        w = Watcher("ha", "status", "--watch", "--json", "--socket", str(status),
                    "--interval", "0.2")
        first = json.loads(w.next_line(m0))
        assert (first["group"], first["from"], first["to"]) == (label, None, "alive")

        def total(found: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                  name: str) -> float:
            return sum(v for (n, _), v in found.items() if n == name)

        before = scrape(url)
        client = python_client(s, 3)
        _out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        after = scrape(url)
        assert total(after, "hacli_calls_total") > total(before, "hacli_calls_total")
        assert (total(after, "hacli_call_duration_seconds_count")
                == total(after, "hacli_calls_total"))
        assert value(after, "hacli_member_up", group=label, member=m0) == 1

        lab.fail(m0)
        client = python_client(s, 3)  # its calls meet the dead member and fail over
        _out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        down = json.loads(w.next_line(rf'"member": "{m0}".*"to": "down"'))
        assert down["from"] == "alive" and down["reason"].startswith("CKR_")
        crashed = scrape(url)
        assert value(crashed, "hacli_member_up", group=label, member=m0) == 0
        assert value(crashed, "hacli_member_up", group=label, member=m1) == 1
        assert value(crashed, "hacli_member_failures_total", group=label, member=m0) == 1
        assert value(crashed, "hacli_member_state_seconds", group=label, member=m0,
                     state="down") >= 0
    finally:
        if w is not None:
            w.interrupt()
        lab.restore(m0)
        stop_serve(s)
    assert not status.exists()  # removed with the main socket


def test_watching_a_serve_that_stops_ends_with_one_error_line(lab: Lab,
                                                              tmp_path: Path) -> None:
    s = start_serve(lab, tmp_path / "run")
    status = s.socket.with_name(s.socket.name + ".status")
    assert status.exists()  # found beside the serve's own socket, given here
    w = Watcher("ha", "status", "--watch", "--socket", str(s.socket), "--interval", "0.2")
    w.next_line(r" -> alive$")
    stop_serve(s)
    assert w.proc.wait(timeout=60) == 1
    assert w.proc.stderr is not None
    assert w.proc.stderr.read().splitlines() == [
        "Error: the status socket closed: hacli serve stopped"]


def test_live_view_ops_per_second_and_changes() -> None:
    """The view's arithmetic on messages as a serve sends them: operations per
    second from two snapshots' call counts, a change line applied at once."""
    from rich.console import Console

    from hacli.cli.watch import LiveView

    def snap(calls: int) -> dict[str, object]:
        member = {"serial": "m0", "state": "alive", "alive": True, "in_flight": 2,
                  "calls": calls, "errors": 0, "failures": 0, "recoveries": 0,
                  "failovers": 0, "gave_ups": 0, "since": "2026-01-01T00:00:00.000Z",
                  "last_failure": None, "last_error": None, "attempts_used": None,
                  "attempts_left": None, "next_attempt": None}
        return {"type": "snapshot", "time": "2026-01-01T00:00:00.000Z",
                "groups": [{"label": "g", "serial": "1m0", "members": [member]}]}

    def shown(view: LiveView) -> str:
        console = Console(width=200, record=True, color_system=None)
        console.print(view.render())
        return console.export_text()

    view = LiveView()
    view.update(snap(0))
    assert re.search(r"m0\s+│ alive │ 2\s+│ 0\.0 ", shown(view))
    view.update(snap(10))  # 10 calls since the last snapshot
    found = re.search(r"m0\s+│ alive │ 2\s+│ ([\d.]+) ", shown(view))
    assert found and float(found.group(1)) > 0
    view.update({"type": "change", "time": "2026-01-01T00:00:01.000Z", "group": "g",
                 "member": "m0", "from": "alive", "to": "down", "reason": "CKR_DEVICE_ERROR",
                 "attempts_used": 0, "attempts_left": 3, "next_attempt": None})
    assert re.search(r"m0\s+│ down\s+│ 2\s+│ [\d.]+\s+│ \d+[smh]\S*\s+│ 0\s+│ 3\s+│ -",
                     shown(view))
