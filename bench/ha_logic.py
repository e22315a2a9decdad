#!/usr/bin/env python3
"""The HA layer's own cost per call: the engine's path with the module stubbed out.

    .venv/bin/python bench/ha_logic.py [--calls 200000] [--rounds 5] [--json]

A 2-member lab group is opened through the engine as usual; then each
member's work session (and the RSA key object the engine resolved there) is
replaced by a stub that answers at once.  What is left is exactly hacli's
path: the virtual session, the recovery check, the balancer, the executor,
object resolution, the member's call lock and deadline.  The stub's own cost
(calling it directly) is measured in the same rounds and subtracted.
Medians over rounds, µs per call, one thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pkcs11 import KeyType, Mechanism
from report import num, table

from hacli.conf.model import load_config
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.lab import Lab
from hacli.lab.provision import provision_lab


class StubWork:
    """A work session that answers ``C_GenerateRandom`` at once."""

    def generate_random(self, nbits: int) -> bytes:
        return b"\0" * (nbits // 8)


class StubKey:
    """A key object that answers ``C_Sign`` at once."""

    def __init__(self, handle: int):
        self.handle = handle

    def sign(self, data: bytes, mechanism: Any = None, mechanism_param: Any = None) -> bytes:
        return b"\0" * 256


def per_call_us(fn: Any, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(2)
        try:
            provision_lab(lab)  # the transport key: the pair is copied to both members
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            results = measure(config, lab.pin(), args.calls, args.rounds)
        finally:
            lab.down(purge=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print("## The HA logic alone (module stubbed, 1 thread)\n")
    print(table(["call", "HA path µs/call", "stub alone µs/call", "HA logic µs/call"],
                [[name, num(r["ha_us"], 2), num(r["stub_us"], 2), num(r["logic_us"], 2)]
                 for name, r in results.items()]))
    return 0


def measure(config: Any, pin: str, calls: int, rounds: int) -> dict[str, dict[str, float]]:
    with Engine(config) as engine:
        group = engine.group()
        s = group.open_session()
        s.login(pin)
        _pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="ha-logic-bench")
        s.sign(priv, b"x", mechanism=Mechanism.SHA256_RSA_PKCS)  # resolved on one member
        vobj = group.vobject(priv, "C_Sign")
        saved = []
        for m in group.members:
            conn = m.conn
            assert conn is not None
            # resolve it on every member, then swap in the stubs on every lane
            # the member's connection has opened (the lane a call gets is
            # whichever is free)
            m.run(lambda c, m=m: group._objects.resolve(m, c, vobj), operation="C_FindObjects")
            _cid, handle = vobj.real[m.serial]
            for lane in conn.lanes:
                if lane is not None:
                    saved.append((lane, lane.work, handle, lane.objects.get(handle)))
                    lane.work = StubWork()
                    lane.objects[handle] = StubKey(handle)
        stub_work, stub_key = StubWork(), StubKey(0)
        cases = {
            "C_GenerateRandom (32 B)": (lambda: s.generate_random(32),
                                        lambda: stub_work.generate_random(256)),
            "C_Sign (RSA key object)": (
                lambda: s.sign(priv, b"x", mechanism=Mechanism.SHA256_RSA_PKCS),
                lambda: stub_key.sign(b"x", mechanism=Mechanism.SHA256_RSA_PKCS)),
        }
        out: dict[str, dict[str, float]] = {}
        try:
            for name, (ha, stub) in cases.items():
                per_call_us(ha, calls // 10)  # warm up
                ha_runs, stub_runs = [], []
                for _ in range(rounds):  # alternate A and B
                    ha_runs.append(per_call_us(ha, calls))
                    stub_runs.append(per_call_us(stub, calls))
                ha_us, stub_us = statistics.median(ha_runs), statistics.median(stub_runs)
                out[name] = {"ha_us": ha_us, "stub_us": stub_us, "logic_us": ha_us - stub_us}
        finally:
            for lane, work, handle, obj in saved:
                lane.work = work
                if obj is None:
                    del lane.objects[handle]
                else:
                    lane.objects[handle] = obj
            s.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
