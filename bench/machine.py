"""What else the machine did while a benchmark ran: CPU time outside the benchmark.

Linux only (``/proc``).  The machine's busy CPU time (``/proc/stat``: user,
nice, system, irq, softirq) less this process's own CPU time (every thread) and
the CPU time of the given process groups (the lab's member servers and the
connections they forked, reaped children included) is the time other
processes took: a soak, a build, another benchmark.  A figure measured while
other processes took a core is a figure of a shared machine, and says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds every core has been busy since boot (steal and idle excluded)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    return (user + nice + system + irq + softirq) / TICK


def group_seconds(pgids: set[int]) -> float:
    """CPU seconds of every process in these process groups, reaped children included."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        rest = stat[stat.rindex(")") + 2:].split()  # fields from the state on
        if int(rest[2]) in pgids:  # field 5, pgrp
            total += sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    return total / TICK


class ForeignCpu:
    """A running count of the CPU seconds other processes took; only the
    difference of two readings means anything.

    :param groups: the process groups that belong to the benchmark (the lab's
        member servers); they must live through both readings.
    """

    def __init__(self, groups: Iterable[int]):
        self._groups = set(groups)

    def read(self) -> float:
        own = os.times()
        return busy_seconds() - own.user - own.system - group_seconds(self._groups)


def socket_round_trip_us(trips: int = 2000) -> float:
    """Microseconds one unix-socket round trip between two processes takes here:
    a 12-byte message (a p11-kit frame header) sent to a forked child that sends
    it back, both blocking in ``recv``.  Every socket hop a call makes costs about
    this much wall time on top of the work at both ends: mostly the wake-up of
    the process that waits."""
    import socket
    import time

    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child echoes until the parent closes its end
        ours.close()
        try:
            while data := theirs.recv(64):
                theirs.sendall(data)
        finally:
            os._exit(0)
    theirs.close()
    message = b"\0" * 12
    try:
        for _ in range(100):  # warm-up
            ours.sendall(message)
            ours.recv(64)
        start = time.perf_counter()
        for _ in range(trips):
            ours.sendall(message)
            ours.recv(64)
        return (time.perf_counter() - start) / trips * 1e6
    finally:
        ours.close()
        os.waitpid(pid, 0)
