#!/usr/bin/env python3
"""The pictures of docs/performance.md: throughput against members, latency across failures.

    .venv/bin/python bench/pictures.py [--seconds 2] [--rounds 3] [--threads 4]
        [--modes rsasign random] [--timeline 24] [--timeline-threads 2] [--out docs]
        [--data JSON] [--redraw JSON]

Needs matplotlib (``pip install -e '.[bench]'``; ``make bench`` does it).  On a
fresh lab of 3 members (SoftHSM2 tokens, each behind its own ``p11-kit server``,
AutoReconnectInterval 5 s, ReceiveTimeout 3 s):

``performance-throughput.png``
    ops/s through the HA virtual slot with the group cut down to 1, 2 and 3
    members: ``--threads`` threads of ``hacli multitoken``'s load loop
    (:func:`hacli.multitoken.run`, every answer checked) for ``--seconds``, the
    median of ``--rounds`` runs per point, after a short warm-up.
``performance-failover.png``
    every call of ``--timeline-threads`` threads signing (RSA-2048) through the
    HA slot for ``--timeline`` seconds, at its start time with its latency,
    while member0 is crashed (SIGKILL) at 15 % of the run, member1 frozen
    (SIGSTOP) at 35 %, and both restored at 55 %; a step line shows how many
    members the group has in service.

Prints the figures behind the pictures as Markdown; ``--data`` keeps them as
JSON, from which ``--redraw`` draws again without a lab.  The lab is torn
down (purged) at the end, always.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ha_bench import check, log, make_keys, with_members
from machine import ForeignCpu
from report import num, table

from hacli.conf.model import load_config
from hacli.conf.model_types import HAConfig
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.lab import Lab
from hacli.lab.provision import provision_lab
from hacli.multitoken import MODES, run
from hacli.multitoken.targets import HATarget

ROOT = Path(__file__).resolve().parent.parent
MEMBERS = (1, 2, 3)
#: when the timeline's faults happen, as fractions of its length
CRASH_AT, FREEZE_AT, RESTORE_AT = 0.15, 0.35, 0.55
WARMUP = 0.5


# ---- throughput against members ---------------------------------------------------


def throughput(config: HAConfig, pin: str, state_dir: Path, modes: list[str], threads: int,
               seconds: float, rounds: int, other: ForeignCpu) -> tuple[dict[str, list[float]],
                                                                       float]:
    """ops/s per mode, one figure per member count of :data:`MEMBERS`: the median
    of ``rounds`` runs (the modes take turns, so a busy moment of a shared
    machine does not land on one point only); and the cores other processes
    kept busy meanwhile, on average (:mod:`machine`)."""
    out: dict[str, list[float]] = {mode: [] for mode in modes}
    before, start = other.read(), time.perf_counter()
    for n in MEMBERS:
        with Engine(with_members(config, n), state_dir=state_dir) as engine:
            target = HATarget(engine, None, pin)
            try:
                for mode in modes:
                    run(target, mode, threads, WARMUP)
                samples: dict[str, list[float]] = {mode: [] for mode in modes}
                for _ in range(rounds):
                    for mode in modes:
                        samples[mode].append(check(run(target, mode, threads,
                                                       seconds)).ops_per_s)
                for mode in modes:
                    out[mode].append(statistics.median(samples[mode]))
                    log(f"  {n} member(s), {mode}: {out[mode][-1]:,.0f} ops/s")
            finally:
                target.close()
    return out, max(0.0, (other.read() - before) / (time.perf_counter() - start))


def draw_throughput(figures: dict[str, list[float]], threads: int, other_cores: float | None,
                    path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for mode, ops in figures.items():
        ax.plot(MEMBERS, ops, marker="o", label=mode)
        for x, y in zip(MEMBERS, ops, strict=True):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8)
    ax.set_xticks(MEMBERS)
    ax.set_xlabel("members in the HA group")
    ax.set_ylabel("operations per second (HA slot)")
    ax.set_yscale("log")
    busy = "" if other_cores is None else f"; other processes: {other_cores:.2f} cores busy"
    ax.set_title(f"Throughput against members\n({threads} threads, lab members on one "
                 f"host{busy})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- latency across a crash, a freeze and a recovery --------------------------------


@dataclass
class Timeline:
    """What the timeline run recorded (times in seconds from its start)."""

    seconds: float
    calls: list[tuple[float, float, bool]] = field(default_factory=list)  # start, ms, ok
    events: list[tuple[float, str]] = field(default_factory=list)
    in_service: list[tuple[float, int]] = field(default_factory=list)


def timeline(lab: Lab, config: HAConfig, pin: str, state_dir: Path, seconds: float,
             threads: int) -> Timeline:
    """Sign through the HA slot of every lab member while members fail and come back."""
    out = Timeline(seconds)
    lock = threading.Lock()
    with Engine(config, state_dir=state_dir) as engine:
        target = HATarget(engine, None, pin)
        try:
            with target.worker() as ops:
                prepared = MODES["rsasign"](target, ops)
            group = target.group
            start = time.perf_counter()
            deadline = start + seconds
            ready = threading.Barrier(threads + 1)

            def work() -> None:
                calls: list[tuple[float, float, bool]] = []
                with target.worker() as o:
                    try:
                        ready.wait()
                    except threading.BrokenBarrierError:
                        return  # another worker got no session: the main thread says so
                    while (t0 := time.perf_counter()) < deadline:
                        try:
                            prepared.op(o)
                            ok = True
                        except Exception:  # a failed call is a point of the picture
                            ok = False
                        calls.append((t0 - start, (time.perf_counter() - t0) * 1000, ok))
                with lock:
                    out.calls += calls

            pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
            for t in pool:
                t.start()
            ready.wait(timeout=60)  # BrokenBarrierError when a worker could not start
            members = [m.serial for m in group.members]
            plan = [(CRASH_AT, f"crash {members[0]}", lambda: lab.fail(members[0])),
                    (FREEZE_AT, f"freeze {members[1]}", lambda: lab.hang(members[1])),
                    (RESTORE_AT, "restore both",
                     lambda: (lab.restore(members[0]), lab.restore(members[1])))]
            while (now := time.perf_counter()) < deadline:
                if plan and now - start >= plan[0][0] * seconds:
                    _, label, act = plan.pop(0)
                    act()
                    out.events.append((now - start, label))
                    log(f"  {now - start:5.1f} s: {label}")
                out.in_service.append((now - start, sum(m.alive for m in group.members)))
                time.sleep(0.05)  # the sampling period of the step line
            for t in pool:
                t.join()
        finally:
            target.close()
    out.calls.sort()
    return out


def draw_timeline(tl: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, service) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.4), dpi=110,
                                      gridspec_kw={"height_ratios": [4, 1]})
    good = [(t, ms) for t, ms, ok in tl.calls if ok]
    bad = [(t, ms) for t, ms, ok in tl.calls if not ok]
    if good:
        ax.scatter(*zip(*good, strict=True), s=4, alpha=0.5, label="call (ok)")
    if bad:
        ax.scatter(*zip(*bad, strict=True), s=30, marker="x", color="red", label="call failed")
    ax.set_yscale("log")
    top = max((ms for _, ms, _ in tl.calls), default=10.0)
    ax.set_ylim(top=top * 3)  # room for the event labels above the slowest call
    ax.set_ylabel("latency of the call\nstarted then, ms")
    ax.set_xlim(0, tl.seconds)
    for t, label in tl.events:
        for a in (ax, service):
            a.axvline(t, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (t, 1), xycoords=("data", "axes fraction"), xytext=(3, -4),
                    textcoords="offset points", fontsize=8, va="top")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("RSA-2048 sign through the HA slot across a crash, a freeze and a recovery")
    if tl.in_service:
        xs, ys = zip(*tl.in_service, strict=True)
        service.step(xs, ys, where="post", color="green", linewidth=1.5)
    service.set_ylim(-0.3, max((n for _, n in tl.in_service), default=3) + 0.5)
    service.set_ylabel("members\nin service")
    service.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    service.set_xlabel("time since start, s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- the report ---------------------------------------------------------------------


def timeline_rows(tl: Timeline) -> list[list[Any]]:
    """Calls, failures and the slowest call of each phase of the timeline."""
    marks = [0.0, *(t for t, _ in tl.events), tl.seconds]
    names = ["steady", *(label for _, label in tl.events)]
    rows = []
    for name, a, b in zip(names, marks, marks[1:], strict=False):
        phase = [(ms, ok) for t, ms, ok in tl.calls if a <= t < b]
        worst = max((ms for ms, _ in phase), default=None)
        rows.append([f"{name} ({a:.1f}–{b:.1f} s)", len(phase),
                     sum(not ok for _, ok in phase), num(worst, 1)])
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0, help="per throughput point (2)")
    p.add_argument("--threads", type=int, default=4, help="throughput threads (4)")
    p.add_argument("--modes", nargs="+", default=["rsasign", "random"], choices=sorted(MODES))
    p.add_argument("--timeline", type=float, default=24.0, help="timeline length, s (24)")
    p.add_argument("--timeline-threads", type=int, default=2, help="timeline threads (2)")
    p.add_argument("--rounds", type=int, default=3, help="throughput runs per point (3)")
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (docs)")
    p.add_argument("--data", type=Path, help="also write the figures as JSON here")
    p.add_argument("--redraw", type=Path, metavar="JSON",
                   help="draw from the JSON of an earlier --data run; measure nothing")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> tuple[dict[str, list[float]], float, Timeline]:
    """A lab of 3 members, the throughput sweep, the timeline; the lab purged after."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state_dir = work / "state"
        lab = Lab(work / "lab")
        log(f"lab: {len(MEMBERS)} members")
        lab.up(max(MEMBERS))
        try:
            provision_lab(lab)
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            pin = lab.pin()
            make_keys(config, max(MEMBERS), pin, state_dir, sorted({*args.modes, "rsasign"}))
            log("throughput against members")
            other = ForeignCpu(m.pid for m in lab.status().members if m.pid is not None)
            figures, other_cores = throughput(config, pin, state_dir, args.modes, args.threads,
                                              args.seconds, args.rounds, other)
            log("timeline")
            tl = timeline(lab, config, pin, state_dir, args.timeline, args.timeline_threads)
        finally:
            lab.down(purge=True)
    return figures, other_cores, tl


def save(path: Path, threads: int, timeline_threads: int, figures: dict[str, list[float]],
         other_cores: float | None, tl: Timeline) -> None:
    """The figures as JSON (``--data``)."""
    path.write_text(json.dumps({
        "threads": threads, "timeline_threads": timeline_threads, "throughput": figures,
        "other_cores": other_cores, "timeline": dataclasses.asdict(tl)}) + "\n")


def restore(path: Path) -> tuple[int, int, dict[str, list[float]], float | None, Timeline]:
    """What :func:`save` wrote (``--redraw``)."""
    data = json.loads(path.read_text())
    t = data["timeline"]
    tl = Timeline(t["seconds"], [(a, b, c) for a, b, c in t["calls"]],
                  [(a, b) for a, b in t["events"]], [(a, b) for a, b in t["in_service"]])
    return (data["threads"], data["timeline_threads"], data["throughput"],
            data.get("other_cores"), tl)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.redraw:
        args.threads, args.timeline_threads, figures, other_cores, tl = restore(args.redraw)
    else:
        figures, other_cores, tl = measure(args)
    if args.data:
        save(args.data, args.threads, args.timeline_threads, figures, other_cores, tl)
    args.out.mkdir(parents=True, exist_ok=True)
    draw_throughput(figures, args.threads, other_cores, args.out / "performance-throughput.png")
    draw_timeline(tl, args.out / "performance-failover.png")
    print(f"## Throughput against members ({args.threads} threads, ops/s)\n")
    print(table(["mode", *(f"{n} member{'s' if n > 1 else ''}" for n in MEMBERS)],
                [[mode, *(num(x) for x in ops)] for mode, ops in figures.items()]))
    print(f"\n## Latency across a crash, a freeze and a recovery ({args.timeline_threads} "
          "threads, rsasign)\n")
    print(table(["phase", "calls", "failed", "slowest, ms"], timeline_rows(tl)))
    if other_cores is not None:
        print(f"\nOther processes kept {other_cores:.2f} cores busy during the throughput runs.")
    print(f"\nWrote {args.out / 'performance-throughput.png'} and "
          f"{args.out / 'performance-failover.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
