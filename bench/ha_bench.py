#!/usr/bin/env python3
"""The HA layer's cost against the member directly and against no hacli at all.

    .venv/bin/python bench/ha_bench.py [--seconds 1.5] [--rounds 5] [--json PATH]
        [--modes rsasign ecsign aesenc random] [--threads 1 4] [--members 1 2]
        [--warmup 0.2] [--failover-rounds 5]

On a fresh lab (SoftHSM2 tokens, each behind its own ``p11-kit server``), one
run compares three ways of loading the same keys with the same work:

A  a raw python-pkcs11 loop, no hacli code (``bench/rawloop.py``): a copy of the
   lab's ``p11-kit-client.so`` per member, the threads split over the members,
   a session per thread and member -- the limit of this stack;
B  ``multitoken --slot SERIAL``: hacli's load loop on the member directly
   (no HA layer; only with 1 member);
C  ``multitoken --slot ha``: the same loop on the HA virtual slot.

B and C run in this process through the library (:func:`hacli.multitoken.run`),
A through its own loop; every answer of B and C is checked.  For each member
count, every cell (mode x threads) runs its variants in turn, A B C A B C ...,
in each of ``--rounds`` rounds.  Figures are medians over the rounds; ratios and
the time added per call are medians of each round's own figures (variants of a
round ran side by side, so slow drift cancels).  Client CPU per operation is the
process CPU time (every thread) over the timed window, divided by the calls.
Each run also records the cores other processes kept busy meanwhile
(``bench/machine.py``), and the report says where the machine was shared.

Ends with the extra latency of the call that meets a crashed member (failover)
and the issue's goals, met or missed.  Prints Markdown; ``--json PATH`` also
writes every figure as JSON (``-``: JSON only, on stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from machine import ForeignCpu
from pkcs11 import Attribute, Mechanism, ObjectClass
from rawloop import RawMember, Workload
from rawloop import run as run_raw
from report import num, table

from hacli.conf.model import load_config
from hacli.conf.model_types import GroupConf, HAConfig
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.lab import Lab, find_tools
from hacli.lab.provision import provision_lab
from hacli.multitoken import MODES, Result, run
from hacli.multitoken.modes import BLOCK, DATA, IV, KEY_LABELS, RANDOM_BYTES
from hacli.multitoken.targets import DirectTarget, HATarget

#: Short names of the variants (a round runs them in this order).
VARIANT_SHORT = {"A": "raw", "B": "direct", "C": "HA"}
MODE_TITLES = {
    "rsasign": "rsasign (RSA-2048)",
    "ecsign": "ecsign (P-256)",
    "aesenc": "aesenc (AES-256-CBC, 4 KiB)",
    "random": f"random ({RANDOM_BYTES} B)",
}
WORKLOAD = Workload(KEY_LABELS, DATA, BLOCK, IV, RANDOM_BYTES)
#: Mean cores taken by other processes from which the report says the machine was shared.
BUSY_CORES = 0.1


def plural(n: int, word: str) -> str:
    """``1 member``, ``2 members``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def log(message: str) -> None:
    """Progress on stderr (stdout is the report)."""
    print(message, file=sys.stderr, flush=True)


# ---- figures -----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One timed run of one variant."""

    ops_per_s: float
    cpu_us_per_op: float
    #: cores other processes kept busy meanwhile (:mod:`machine`)
    other_cores: float = 0.0

    @classmethod
    def of(cls, ops: int, seconds: float, cpu_seconds: float) -> Sample:
        return cls(ops / seconds, cpu_seconds / ops * 1e6 if ops else 0.0)


@dataclass(frozen=True)
class Cell:
    """What one row measures."""

    members: int
    mode: str
    threads: int

    def variants(self) -> list[str]:
        """A and C always; B (one member directly) only with one member."""
        return ["A", "B", "C"] if self.members == 1 else ["A", "C"]


@dataclass
class CellResult:
    """A cell's samples, one per round for each variant."""

    cell: Cell
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def ops(self, v: str) -> float | None:
        """Median ops/s of variant *v*."""
        s = self.samples.get(v)
        return statistics.median(x.ops_per_s for x in s) if s else None

    def cpu(self, v: str) -> float | None:
        """Median client CPU µs per operation of variant *v*."""
        s = self.samples.get(v)
        return statistics.median(x.cpu_us_per_op for x in s) if s else None

    def other_cores(self) -> float:
        """Mean cores other processes kept busy during the cell's runs."""
        return statistics.mean(x.other_cores for s in self.samples.values() for x in s)

    def spread(self) -> float:
        """The widest (max - min) / median of ops/s among the variants, in %."""
        out = 0.0
        for s in self.samples.values():
            values = [x.ops_per_s for x in s]
            out = max(out, (max(values) - min(values)) / statistics.median(values) * 100)
        return out

    def _paired(self, a: str, b: str, f: Callable[[float, float], float]) -> float | None:
        if a not in self.samples or b not in self.samples:
            return None
        pairs = zip(self.samples[a], self.samples[b], strict=True)
        return statistics.median(f(x.ops_per_s, y.ops_per_s) for x, y in pairs)

    def ratio(self, a: str, b: str) -> float | None:
        """Median over rounds of ops/s of *a* over ops/s of *b*."""
        return self._paired(a, b, lambda x, y: x / y)

    def added_us(self, a: str, b: str) -> float | None:
        """Median over rounds of the time *a* adds to each call of one thread,
        against *b*: ``threads * (1/ops_a - 1/ops_b)`` in µs."""
        n = self.cell.threads
        return self._paired(a, b, lambda x, y: n * (1 / x - 1 / y) * 1e6)

    def as_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.cell),
            "variants": {v: {"ops_per_s": [round(x.ops_per_s, 1) for x in s],
                             "cpu_us_per_op": [round(x.cpu_us_per_op, 2) for x in s],
                             "other_cores": [round(x.other_cores, 3) for x in s],
                             "median_ops_per_s": round(self.ops(v) or 0, 1),
                             "median_cpu_us_per_op": round(self.cpu(v) or 0, 2)}
                         for v, s in self.samples.items()},
            "ratio": {f"{a}/{b}": round(r, 4) for a, b in (("C", "B"), ("C", "A"))
                      if (r := self.ratio(a, b)) is not None},
            "added_us": {f"{a}-{b}": round(r, 2) for a, b in (("C", "B"), ("C", "A"))
                         if (r := self.added_us(a, b)) is not None},
            "spread_pct": round(self.spread(), 1),
        }


@dataclass(frozen=True)
class Goal:
    """One of the issue's goals: a figure of one cell against a limit."""

    cell: Cell
    #: ``ratio`` (at least *limit*) or ``added_us`` (at most *limit*)
    kind: Literal["ratio", "added_us"]
    a: str
    b: str
    limit: float

    def describe(self) -> str:
        c = self.cell
        what = (f"{VARIANT_SHORT[self.a]}/{VARIANT_SHORT[self.b]} ≥ {self.limit}"
                if self.kind == "ratio" else
                f"{VARIANT_SHORT[self.a]} adds ≤ {self.limit:g} µs per call "
                f"(vs {VARIANT_SHORT[self.b]})")
        return f"{c.mode}, {plural(c.members, 'member')}, {plural(c.threads, 'thread')}: {what}"

    def check(self, results: dict[Cell, CellResult]) -> dict[str, Any]:
        """The goal, its figure, ``met``, ``missed`` or ``not measured``, and the
        cores other processes took during the cell's runs."""
        r = results.get(self.cell)
        figure = None if r is None else getattr(r, self.kind)(self.a, self.b)
        verdict = "not measured"
        if figure is not None:
            ok = figure >= self.limit if self.kind == "ratio" else figure <= self.limit
            verdict = "met" if ok else "missed"
        return {"goal": self.describe(), "figure": figure, "verdict": verdict,
                "other_cores": None if r is None else round(r.other_cores(), 3)}

    def line(self, results: dict[Cell, CellResult]) -> str:
        """The goal as a Markdown list item."""
        c = self.check(results)
        out = f"- {c['goal']}: **{c['verdict']}**"
        if c["figure"] is not None:
            out += (f" ({c['figure']:.3f})" if self.kind == "ratio"
                    else f" ({c['figure']:.1f} µs)")
        if c["other_cores"] is not None and c["other_cores"] >= BUSY_CORES:
            out += f"; other processes took {c['other_cores']:.2f} cores meanwhile"
        return out


GOALS = (
    Goal(Cell(1, "rsasign", 1), "ratio", "C", "B", 0.97),
    Goal(Cell(1, "random", 1), "added_us", "C", "B", 15.0),
    Goal(Cell(2, "rsasign", 4), "ratio", "C", "A", 0.95),
)


# ---- the variants --------------------------------------------------------------


def with_members(config: HAConfig, n: int) -> HAConfig:
    """The lab's group cut down to its first ``n`` members."""
    g = config.groups[0]
    group = GroupConf(g.index, g.label, g.serial, g.members[:n], g.synchronize)
    return dataclasses.replace(config, groups=(group,))


def check(result: Result) -> Sample:
    """A multitoken run's sample; any error or wrong answer ends the benchmark."""
    if result.errors:
        raise SystemExit(f"{result.mode} on {result.slot}: {result.errors} errors "
                         f"{result.error_kinds}")
    return Sample.of(result.ops, result.seconds, result.cpu_seconds)


class Stack:
    """A, B and C for one member count, set up once and kept for every round.

    The raw members are loaded first, while no engine is loading modules (they
    set ``P11_KIT_SERVER_ADDRESS`` in ``os.environ`` for their load).
    """

    def __init__(self, config: HAConfig, members: int, pin: str, workdir: Path,
                 state_dir: Path):
        serials = config.groups[0].members[:members]
        self.raw: list[RawMember] = []
        for serial in serials:
            loc = config.location(serial)
            assert loc is not None
            self.raw.append(RawMember(loc.library, loc.env, workdir, serial, pin))
        self.engine = Engine(with_members(config, members), state_dir=state_dir)
        self.ha = HATarget(self.engine, None, pin)
        self.direct = DirectTarget(self.engine, serials[0], pin) if members == 1 else None

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def measure(self, variant: str, mode: str, threads: int, seconds: float) -> Sample:
        """One timed run of *variant* (``A``, ``B`` or ``C``)."""
        if variant == "A":
            r = run_raw(self.raw, mode, WORKLOAD, threads, seconds)
            return Sample.of(r.ops, r.seconds, r.cpu_seconds)
        target = self.ha if variant == "C" else self.direct
        assert target is not None
        return check(run(target, mode, threads, seconds))

    def close(self) -> None:
        """Every session closed, the engine closed, the raw members logged out."""
        if self.direct is not None:
            self.direct.close()
        self.ha.close()
        self.engine.close()
        for m in self.raw:
            m.close()


def make_keys(config: HAConfig, members: int, pin: str, state_dir: Path,
              modes: list[str]) -> None:
    """The modes' keys, made through the HA slot, so every member has them."""
    with Engine(with_members(config, members), state_dir=state_dir) as engine:
        target = HATarget(engine, None, pin)
        try:
            for mode in modes:
                with target.worker() as ops:
                    MODES[mode](target, ops)
        finally:
            target.close()


def measure_block(stack: Stack, cells: list[Cell], rounds: int, seconds: float,
                  warmup: float, other: ForeignCpu) -> Iterator[tuple[Cell, str, Sample]]:
    """Every cell's variants in turn, once to warm up, then ``rounds`` times;
    each sample says how many cores other processes kept busy meanwhile."""
    for cell in cells:
        for v in cell.variants():
            stack.measure(v, cell.mode, cell.threads, warmup)
    for r in range(1, rounds + 1):
        t0 = time.monotonic()
        for cell in cells:
            for v in cell.variants():
                before, start = other.read(), time.perf_counter()
                sample = stack.measure(v, cell.mode, cell.threads, seconds)
                cores = (other.read() - before) / (time.perf_counter() - start)
                yield cell, v, dataclasses.replace(sample, other_cores=max(0.0, cores))
        log(f"  {plural(cells[0].members, 'member')}: round {r}/{rounds} "
            f"({time.monotonic() - t0:.0f} s)")


# ---- failover --------------------------------------------------------------------


def failover_latency(lab: Lab, config: HAConfig, pin: str, rounds: int,
                     state_dir: Path) -> list[tuple[float, float]]:
    """(median ms before the crash, ms of the call that met the crashed member) per round.

    rsasign through the HA slot of 2 members; member0's server is killed
    between two calls, and calls go on until one has met the crash.
    """
    out = []
    with Engine(with_members(config, 2), state_dir=state_dir) as engine:
        group = engine.group()
        s = group.open_session()
        s.login(pin)
        priv = s.find_objects({Attribute.LABEL: KEY_LABELS["rsasign"],
                               Attribute.CLASS: ObjectClass.PRIVATE_KEY})[0]

        def sign_ms() -> float:
            t0 = time.perf_counter()
            s.sign(priv, DATA, mechanism=Mechanism.SHA256_RSA_PKCS)
            return (time.perf_counter() - t0) * 1000

        for _ in range(rounds):
            before = [sign_ms() for _ in range(50)]
            victim = group.members[0].serial
            lab.fail(victim)
            worst = 0.0
            while group.members[0].alive:  # until a call has met the crash
                worst = max(worst, sign_ms())
            out.append((statistics.median(before), worst))
            lab.restore(victim)
            deadline = time.monotonic() + 30
            while not group.recover_now(victim) and time.monotonic() < deadline:
                time.sleep(0.05)
        s.close()
    return out


# ---- the report -------------------------------------------------------------------


def environment(lab_members: int) -> dict[str, Any]:
    """What the figures were measured on."""
    tools = find_tools()
    return {
        "python": platform.python_version(),
        "python_pkcs11": importlib.metadata.version("python-pkcs11"),
        "p11kit": tools.p11kit_version,
        "softhsm2": tools.softhsm2,
        "cpus": os.cpu_count(),
        "lab_members": lab_members,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def markdown(meta: dict[str, Any], results: dict[Cell, CellResult],
             failover: list[tuple[float, float]]) -> str:
    """The whole report."""
    out = ["## The HA layer: raw python-pkcs11 (A), the member directly (B), the HA slot (C)",
           "",
           f"Python {meta['python']}, python-pkcs11 {meta['python_pkcs11']}, the lab's "
           f"p11-kit {meta['p11kit']}, {meta['cpus']} CPUs; load average "
           f"{' '.join(map(str, meta['loadavg_before']))} before, "
           f"{' '.join(map(str, meta['loadavg_after']))} after.  "
           f"{plural(meta['rounds'], 'round')} × {meta['seconds']} s per variant, "
           f"alternating A B C; medians over rounds; {meta['runtime_s']:.0f} s in all.",
           ""]
    if meta["other_cores_mean"] >= BUSY_CORES:
        out += [f"**Other processes shared the machine**: they kept "
                f"{meta['other_cores_mean']:.2f} cores busy on average during the timed "
                f"runs (at most {meta['other_cores_max']:.2f} in one), so these figures "
                "carry their noise; the *other* column says where.", ""]
    out += [f"- **{v}**: {text}" for v, text in (
        ("A", "raw python-pkcs11, no hacli code: a p11-kit-client copy per member, the "
              "threads split over the members (1 thread: round robin), a session per "
              "thread and member, no lock (answers unchecked)"),
        ("B", "`multitoken --slot SERIAL`: hacli's load loop on the member directly, "
              "no HA layer (1 member only; calls serialised on one session)"),
        ("C", "`multitoken --slot ha`: the same loop through the HA virtual slot"),
    )]
    out += ["", "Ratios and added time are medians of each round's own figures; "
            "added time is `threads × (1/ops_C − 1/ops_X)`, what C adds to each call "
            "of one thread.  Spread: the widest (max − min) / median of ops/s among "
            "the row's variants.  Other: the cores other processes (not this benchmark, "
            "not the lab's servers) kept busy during the row's runs, on average.", ""]
    by_members: dict[int, list[CellResult]] = {}
    for r in results.values():
        by_members.setdefault(r.cell.members, []).append(r)
    for members, rows in by_members.items():
        out += [f"### {plural(members, 'member')}: ops/s", "", ops_table(rows), ""]
    out += ["### Client CPU per operation, µs", "",
            "The benchmark process's CPU time (all its threads) over the timed window, "
            "divided by the calls made: the client's cost only (the members' servers "
            "are other processes).", ""]
    out.append(table(
        ["members", "mode", "threads", "A raw", "B direct", "C HA", "C − B", "C − A"],
        [[r.cell.members, MODE_TITLES[r.cell.mode], r.cell.threads, num(r.cpu("A"), 1),
          num(r.cpu("B"), 1), num(r.cpu("C"), 1), num(_minus(r.cpu("C"), r.cpu("B")), 1),
          num(_minus(r.cpu("C"), r.cpu("A")), 1)] for r in results.values()],
        "rlrrrrrr"))
    out.append("")
    if failover:
        out += ["### The call that meets a crashed member (rsasign, 2 members, HA slot)", ""]
        out.append(table(
            ["round", "median call before, ms", "call that met the crash, ms", "extra, ms"],
            [[i, f"{base:.2f}", f"{hit:.2f}", f"{hit - base:.2f}"]
             for i, (base, hit) in enumerate(failover, 1)], "rrrr"))
        out.append("")
    out += ["### Issue goals", "", *(g.line(results) for g in GOALS)]
    return "\n".join(out) + "\n"


def ops_table(rows: list[CellResult]) -> str:
    """ops/s of each variant, C against each other variant, spread and other load."""
    variants = rows[0].cell.variants()
    others = [v for v in ("B", "A") if v in variants]  # C against these
    headers = ["mode", "threads", *(f"{v} {VARIANT_SHORT[v]}" for v in variants),
               *(f"C/{v}" for v in others), *(f"C adds vs {v}, µs" for v in others),
               "spread", "other, cores"]
    return table(headers, [
        [MODE_TITLES[r.cell.mode], r.cell.threads, *(num(r.ops(v)) for v in variants),
         *(num(r.ratio("C", v), 3) for v in others),
         *(num(r.added_us("C", v), 1) for v in others),
         f"{r.spread():.0f} %", f"{r.other_cores():.2f}"] for r in rows])


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def as_json(meta: dict[str, Any], results: dict[Cell, CellResult],
            failover: list[tuple[float, float]]) -> dict[str, Any]:
    """Every figure (each round's too) for ``--json``."""
    return {
        "meta": meta,
        "cells": [r.as_dict() for r in results.values()],
        "failover_ms": [{"before": round(b, 3), "hit": round(h, 3)} for b, h in failover],
        "goals": [g.check(results) for g in GOALS],
    }


# ---- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5,
                        help="timed seconds of each variant in each round (default 1.5)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--warmup", type=float, default=0.2,
                        help="seconds of each variant's one warm-up run (default 0.2)")
    parser.add_argument("--modes", nargs="+", choices=list(MODE_TITLES),
                        default=list(MODE_TITLES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--members", nargs="+", type=int, choices=[1, 2], default=[1, 2])
    parser.add_argument("--failover-rounds", type=int, default=5,
                        help="crashes for the failover latency (0: none; default 5)")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the figures as JSON to PATH (-: JSON only, stdout)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    lab_members = max([*args.members, 2 if args.failover_rounds else 1])
    meta = {**environment(lab_members), "seconds": args.seconds, "rounds": args.rounds}
    results: dict[Cell, CellResult] = {}
    failover: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state_dir = work / "state"
        lab = Lab(work / "lab")
        log(f"lab: {lab_members} members")
        lab.up(lab_members)
        try:
            provision_lab(lab)
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            pin = lab.pin()
            make_keys(config, lab_members, pin, state_dir, args.modes)
            other = ForeignCpu(m.pid for m in lab.status().members if m.pid is not None)
            for members in args.members:
                cells = [Cell(members, mode, t) for mode in args.modes for t in args.threads]
                with Stack(config, members, pin, work, state_dir) as stack:
                    for cell, v, sample in measure_block(stack, cells, args.rounds,
                                                         args.seconds, args.warmup, other):
                        results.setdefault(cell, CellResult(cell)).samples.setdefault(
                            v, []).append(sample)
            if args.failover_rounds:
                log("failover")
                failover = failover_latency(lab, config, pin, args.failover_rounds, state_dir)
        finally:
            lab.down(purge=True)
    meta["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    other_cores = [x.other_cores for r in results.values() for s in r.samples.values()
                   for x in s] or [0.0]
    meta["other_cores_mean"] = round(statistics.mean(other_cores), 3)
    meta["other_cores_max"] = round(max(other_cores), 3)
    meta["runtime_s"] = round(time.monotonic() - started, 1)
    data = as_json(meta, results, failover)
    if args.json == "-":
        print(json.dumps(data, indent=2))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    print(markdown(meta, results, failover), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
