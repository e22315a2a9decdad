#!/usr/bin/env python3
"""The HA layer's cost and scaling, measured in one run on a fresh 3-member lab.

    .venv/bin/python bench/ha_bench.py [--seconds 3]

1. HA slot vs the member directly, rsasign and random, 1 member, 1 thread.
2. ops/s through the HA slot with 1, 2 and 3 members at 4 threads (rsasign, random).
3. The extra latency of the call that meets a crashed member (failover), against
   the median call just before the crash.

Prints Markdown for docs/performance.md.  Ratios compare figures of this run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pkcs11 import Attribute, Mechanism, ObjectClass

from hacli.conf.model import load_config
from hacli.conf.model_types import GroupConf, HAConfig
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.lab import Lab
from hacli.lab.provision import provision_lab
from hacli.multitoken import run
from hacli.multitoken.modes import KEY_LABEL
from hacli.multitoken.targets import DirectTarget, HATarget


def with_members(config: HAConfig, n: int) -> HAConfig:
    """The lab's group cut down to its first ``n`` members."""
    g = config.groups[0]
    group = GroupConf(g.index, g.label, g.serial, g.members[:n], g.synchronize)
    return dataclasses.replace(config, groups=(group,))


def measure(engine: Engine, slot: str, pin: str, mode: str, threads: int,
            seconds: float) -> float:
    target = HATarget(engine, None, pin) if slot == "ha" else DirectTarget(engine, slot, pin)
    try:
        result = run(target, mode, threads, seconds)
    finally:
        target.close()
    if result.errors:
        raise SystemExit(f"{mode} on {slot}: {result.errors} errors {result.error_kinds}")
    return result.ops_per_s


def failover_latency(
    lab: Lab, config: HAConfig, pin: str, rounds: int
) -> list[tuple[float, float]]:
    """(median ms before the crash, ms of the call that met the crashed member) per round."""
    out = []
    with Engine(with_members(config, 2)) as engine:
        group = engine.group()
        s = group.open_session()
        s.login(pin)
        priv = s.find_objects({Attribute.LABEL: f"{KEY_LABEL}-rsa2048",
                               Attribute.CLASS: ObjectClass.PRIVATE_KEY})[0]
        for _ in range(rounds):
            before = []
            for _ in range(50):
                t0 = time.perf_counter()
                s.sign(priv, b"x", mechanism=Mechanism.SHA256_RSA_PKCS)
                before.append((time.perf_counter() - t0) * 1000)
            victim = group.members[0].serial
            lab.fail(victim)
            worst = 0.0
            while group.members[0].alive:  # until a call has met the crash
                t0 = time.perf_counter()
                s.sign(priv, b"x", mechanism=Mechanism.SHA256_RSA_PKCS)
                worst = max(worst, (time.perf_counter() - t0) * 1000)
            out.append((statistics.median(before), worst))
            lab.restore(victim)
            deadline = time.monotonic() + 30
            while not group.recover_now(victim) and time.monotonic() < deadline:
                pass
        s.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(3)
        try:
            provision_lab(lab)
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            pin = lab.pin()
            first = config.groups[0].members[0]
            with Engine(config) as engine:  # the test keys, replicated to all three members
                for mode in ("rsasign", "random"):
                    measure(engine, "ha", pin, mode, 1, 0.2)
            print("## HA slot vs direct member (1 member, 1 thread)\n")
            print("| mode | HA slot ops/s | direct ops/s | HA / direct |")
            print("|---|---:|---:|---:|")
            with Engine(with_members(config, 1)) as engine:
                for mode in ("rsasign", "random"):
                    measure(engine, "ha", pin, mode, 1, 0.3)  # keys + warm-up
                    ha = measure(engine, "ha", pin, mode, 1, args.seconds)
                    direct = measure(engine, first, pin, mode, 1, args.seconds)
                    print(f"| {mode} | {ha:,.0f} | {direct:,.0f} | {ha / direct:.2f} |")
            print("\n## HA slot scaling (4 threads)\n")
            print("| mode | 1 member | 2 members | 3 members | 3 / 1 |")
            print("|---|---:|---:|---:|---:|")
            for mode in ("rsasign", "random"):
                row = []
                for n in (1, 2, 3):
                    with Engine(with_members(config, n)) as engine:
                        measure(engine, "ha", pin, mode, 4, 0.3)  # replicate keys, warm up
                        row.append(measure(engine, "ha", pin, mode, 4, args.seconds))
                cells = " | ".join(f"{r:,.0f}" for r in row)
                print(f"| {mode} | {cells} | {row[2] / row[0]:.2f} |")
            print("\n## The call that meets a crashed member (rsasign, 2 members)\n")
            print("| round | median call before, ms | call that met the crash, ms | extra, ms |")
            print("|---:|---:|---:|---:|")
            for i, (base, hit) in enumerate(failover_latency(lab, config, pin, args.rounds), 1):
                print(f"| {i} | {base:.2f} | {hit:.2f} | {hit - base:.2f} |")
        finally:
            lab.down(purge=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
