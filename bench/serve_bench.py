#!/usr/bin/env python3
"""``hacli serve`` against the member's own ``p11-kit server``, seen from a client.

    .venv/bin/python bench/serve_bench.py [--seconds 1.5] [--rounds 5] [--json PATH]

The client is the same raw python-pkcs11 loop as variant A of
``bench/ha_bench.py`` (``bench/rawloop.py``): RSA-2048 ``SHA256_RSA_PKCS``
signing through a private copy of the lab's ``p11-kit-client.so``, one session
per thread, no hacli code in the client.  Three ways to the keys, run in turn
(D S1 S2 D4, D S1 S2 D4, ...) in each of ``--rounds`` rounds:

D   1 thread straight to member 0's ``p11-kit server`` (one socket hop);
S1  1 thread through ``hacli serve`` over a group of member 0 alone (two hops);
S2  4 threads through ``hacli serve`` over a group of members 0 and 1;
D4  4 threads straight to member 0 (what one member gives 4 threads: context).

The issue's goals (``hacli serve``, "Performance"): S1 / D >= 0.85, and
S2 >= 1.5 x D.  Figures are medians over rounds; ratios are medians of each
round's own ratio.  CPU per call: the client's (this process) and the serving
``hacli serve`` process's (its process group, from ``/proc``).  Both serve
processes run for the whole benchmark with configurations of their own, made
from the lab's with ``hacli hagroup removemember``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ha_bench import environment, make_keys
from machine import ForeignCpu, group_seconds, socket_round_trip_us
from rawloop import RawMember, Workload
from rawloop import run as run_raw
from report import num, table

from hacli.conf.model import load_config
from hacli.conf.store import load
from hacli.lab import Lab, find_tools
from hacli.lab.provision import provision_lab
from hacli.multitoken.modes import BLOCK, DATA, IV, KEY_LABELS, RANDOM_BYTES

WORKLOAD = Workload(KEY_LABELS, DATA, BLOCK, IV, RANDOM_BYTES)
HACLI = str(Path(sys.executable).parent / "hacli")
#: variant -> (what it is, threads)
VARIANTS = {
    "D": ("member 0's p11-kit server, direct", 1),
    "S1": ("hacli serve, 1-member group", 1),
    "S2": ("hacli serve, 2-member group", 4),
    "D4": ("member 0's p11-kit server, direct", 4),
}
#: the socket hops S1 adds to a signature: one per call python-pkcs11's sign
#: makes (C_SignInit, C_Sign with no buffer for the length, C_Sign)
HOPS_PER_SIGNATURE = 3
GOALS = (("S1", "D", 0.85, "1 member, 1 thread: serve / direct"),
         ("S2", "D", 1.5, "2 members, 4 threads: serve / 1-thread direct"))


def log(message: str) -> None:
    print(f"serve-bench: {message}", file=sys.stderr, flush=True)


@dataclass
class Sample:
    """One timed run of a variant."""

    ops_per_s: float
    client_us: float
    serve_us: float | None
    other_cores: float


@dataclass
class Serve:
    """One ``hacli serve`` process over a configuration of its own."""

    proc: subprocess.Popen[str]
    address: str

    @classmethod
    def start(cls, conf: Path, sock: Path) -> Serve:
        proc = subprocess.Popen([HACLI, "--conf", str(conf), "serve", "--socket", str(sock)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it accepts connections
        if not line.startswith("P11_KIT_SERVER_ADDRESS="):
            proc.kill()
            raise SystemExit(f"hacli serve did not start (exit {proc.wait()})")
        return cls(proc, line.split("=", 1)[1].split(";", 1)[0])

    def cpu_seconds(self) -> float:
        return group_seconds({self.proc.pid})

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    #: one socket round trip between two processes, µs, once per round
    round_trips: list[float] = field(default_factory=list)

    def median(self, v: str, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples.get(v, [])
                  if getattr(s, attr) is not None]
        return statistics.median(values) if values else None

    def ratio(self, a: str, b: str) -> float:
        return statistics.median(x.ops_per_s / y.ops_per_s
                                 for x, y in zip(self.samples[a], self.samples[b], strict=True))


def group_conf(lab_conf: Path, target: Path, keep: int, serials: list[str], label: str) -> None:
    """A copy of the lab's configuration whose group has its first ``keep`` members."""
    shutil.copy2(lab_conf, target)
    for serial in serials[keep:]:
        subprocess.run([HACLI, "--conf", str(target), "hagroup", "removemember",
                        "--group", label, "--serial", serial],
                       check=True, capture_output=True)


def measure(raw: RawMember, serve: Serve | None, threads: int, seconds: float,
            other: ForeignCpu) -> Sample:
    before_other, start = other.read(), time.perf_counter()
    before_serve = serve.cpu_seconds() if serve is not None else 0.0
    r = run_raw([raw], "rsasign", WORKLOAD, threads, seconds)
    wall = time.perf_counter() - start
    serve_us = ((serve.cpu_seconds() - before_serve) / r.ops * 1e6
                if serve is not None else None)
    return Sample(r.ops / r.seconds, r.cpu_seconds / r.ops * 1e6, serve_us,
                  max(0.0, (other.read() - before_other) / wall))


def markdown(meta: dict[str, Any], res: Results) -> str:
    rows = []
    for v, (what, threads) in VARIANTS.items():
        rows.append([v, what, threads, num(res.median(v, "ops_per_s")),
                     num(res.median(v, "client_us"), 1),
                     num(res.median(v, "serve_us"), 1),
                     num(res.median(v, "other_cores"), 2)])
    out = [f"Python {meta['python']}, the lab's p11-kit {meta['p11kit']}, {meta['cpus']} CPUs; "
           f"{meta['rounds']} rounds x {meta['seconds']} s per variant, alternating "
           f"D S1 S2 D4; medians over rounds; {meta['runtime_s']} s in all.", "",
           table(["variant", "path", "threads", "signatures/s", "client CPU µs/call",
                  "serve CPU µs/call", "other, cores"], rows, "llrrrrr"), "",
           table(["goal", "ratio", "goal", ""],
                 [[title, f"{res.ratio(a, b):.3f}", f">= {goal}",
                   "met" if res.ratio(a, b) >= goal else "missed"]
                  for a, b, goal, title in GOALS], "lrrl")]
    rtt = statistics.median(res.round_trips)
    d_us = 1e6 / (res.median("D", "ops_per_s") or 1.0)
    out += ["", f"One socket round trip between two processes took {rtt:.1f} µs here (median "
            f"over rounds, measured between them).  S1 makes {HOPS_PER_SIGNATURE} more of "
            f"them a signature than D (the client's C_SignInit, C_Sign length query and "
            f"C_Sign each cross one more socket), so even a server that cost nothing "
            f"would give S1 / D = {d_us:.0f} / ({d_us:.0f} + {HOPS_PER_SIGNATURE} x "
            f"{rtt:.1f}) = {d_us / (d_us + HOPS_PER_SIGNATURE * rtt):.3f} on this machine."]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=1.5, help="seconds per run (default 1.5)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5)")
    p.add_argument("--warmup", type=float, default=0.3, help="warm-up seconds per variant")
    p.add_argument("--json", help="also write every figure as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    meta = environment(2)
    res = Results()
    serves: list[Serve] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lab = Lab(work / "lab")
        log("lab: 2 members")
        lab.up(2)
        try:
            provision_lab(lab)
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            pin = lab.pin()
            make_keys(config, 2, pin, work / "state", ["rsasign"])
            group = config.groups[0]
            serials = list(group.members)
            sockets = work / "serve"
            sockets.mkdir(mode=0o700)
            for keep in (1, 2):
                conf = work / f"serve{keep}.conf"
                group_conf(lab.conf_path, conf, keep, serials, group.label)
                serves.append(Serve.start(conf, sockets / f"serve{keep}.sock"))
            client = find_tools().p11kit_client
            loc = config.location(serials[0])
            assert loc is not None
            direct = RawMember(loc.library, loc.env, work, serials[0], pin)
            via = [RawMember(client, {"P11_KIT_SERVER_ADDRESS": s.address}, work, "", pin,
                             label=group.label) for s in serves]
            other = ForeignCpu([*(m.pid for m in lab.status().members if m.pid is not None),
                                *(s.proc.pid for s in serves)])
            plan = {"D": (direct, None), "S1": (via[0], serves[0]), "S2": (via[1], serves[1]),
                    "D4": (direct, None)}
            for v, (raw, _serve) in plan.items():
                run_raw([raw], "rsasign", WORKLOAD, VARIANTS[v][1], args.warmup)
            for r in range(1, args.rounds + 1):
                for v, (raw, serve) in plan.items():
                    res.samples.setdefault(v, []).append(
                        measure(raw, serve, VARIANTS[v][1], args.seconds, other))
                res.round_trips.append(socket_round_trip_us())
                log(f"round {r}/{args.rounds}")
            for m in (direct, *via):
                m.close()
        finally:
            for s in serves:
                s.stop()
            lab.down(purge=True)
    meta = {**meta, "rounds": args.rounds, "seconds": args.seconds,
            "runtime_s": round(time.monotonic() - started, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"meta": meta, "samples": {v: [s.__dict__ for s in ss]
                                       for v, ss in res.samples.items()},
             "round_trip_us": res.round_trips,
             "goals": {f"{a}/{b}": res.ratio(a, b) for a, b, _g, _t in GOALS}},
            indent=2) + "\n")
    print(markdown(meta, res), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
