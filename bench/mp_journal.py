#!/usr/bin/env python3
"""What the multi-part replay journal costs: multi-part sign with and without it.

    .venv/bin/python bench/mp_journal.py [--rounds 9] [--sequences 40] [--calls 200000]
                                         [--json]

On a fresh 2-member lab (SoftHSM2 tokens behind ``p11-kit server``), two
engines on the same group, one with ``MultipartJournalBytes`` at its default
(1 MiB: every update is journaled, A) and one with 0 (no journal, B), each
sign a 64 KiB message with RSA-2048 ``SHA256_RSA_PKCS`` in 4 KiB chunks
(``C_SignInit``, 16 ``C_SignUpdate``, ``C_SignFinal``), one thread.  Each
round runs ``--sequences`` sequences on A, then on B (A B A B ...: slow drift
of a shared machine cancels); figures are medians over the rounds, and the
difference is the median of each round's own difference.

The journal's own work (``ReplayJournal.add`` of a 4 KiB chunk, which is all
an update adds when no member fails) is also timed alone, in-process, so the
cost is known even where it drowns in the noise of a token round trip.
Prints Markdown (``--json``: JSON on stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from hacli.conf.model_types import HAConfig
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.engine.replay import ReplayJournal
from hacli.lab import Lab
from hacli.lab.provision import provision_lab

MESSAGE = bytes(range(256)) * 256  # 64 KiB
CHUNK = 4096
CHUNKS = [MESSAGE[i:i + CHUNK] for i in range(0, len(MESSAGE), CHUNK)]
SIGN = Mechanism.SHA256_RSA_PKCS
VARIANTS = {"A": "journal (1 MiB)", "B": "no journal (0)"}


def journal_add_ns(calls: int) -> float:
    """Nanoseconds per ``ReplayJournal.add`` of a 4 KiB chunk (the update's extra
    work), a new journal every 16 chunks as a 64 KiB sequence has."""
    chunk = CHUNKS[0]
    t0 = time.perf_counter()
    for _ in range(calls // 16):
        j = ReplayJournal(1 << 20, False)
        for _ in range(16):
            j.add(chunk, b"")
    return (time.perf_counter() - t0) / (calls // 16 * 16) * 1e9


def sequence_us(session: Any, key: int, sequences: int) -> float:
    """Microseconds per sign sequence, each signature checked against the first."""
    expect = session.sign(key, MESSAGE, mechanism=SIGN)
    t0 = time.perf_counter()
    for _ in range(sequences):
        session.sign_init(key, mechanism=SIGN)
        for chunk in CHUNKS:
            session.sign_update(chunk)
        if session.sign_final() != expect:
            raise SystemExit("bench: a multi-part signature differs from the single-part one")
    return (time.perf_counter() - t0) / sequences * 1e6


def with_journal(config: HAConfig, nbytes: int) -> HAConfig:
    return dataclasses.replace(
        config, settings=dataclasses.replace(config.settings, multipart_journal_bytes=nbytes))


def measure(config: HAConfig, pin: str, rounds: int, sequences: int) -> dict[str, Any]:
    engines = {"A": Engine(with_journal(config, 1 << 20)), "B": Engine(with_journal(config, 0))}
    try:
        sessions, keys = {}, {}
        for v, engine in engines.items():
            s = engine.group().open_session()
            s.login(pin)
            _pub, keys[v] = s.generate_keypair(KeyType.RSA, 2048, label=f"mp-journal-{v}")
            sessions[v] = s
            sequence_us(s, keys[v], 2)  # warm up: operation sessions, helper threads
        runs: dict[str, list[float]] = {"A": [], "B": []}
        for _ in range(rounds):
            for v in ("A", "B"):
                runs[v].append(sequence_us(sessions[v], keys[v], sequences))
        for s in sessions.values():
            s.close()
    finally:
        for engine in engines.values():
            engine.close()
    med = {v: statistics.median(r) for v, r in runs.items()}
    added = statistics.median(a - b for a, b in zip(runs["A"], runs["B"], strict=True))
    return {"rounds": rounds, "sequences": sequences, "message_bytes": len(MESSAGE),
            "chunk_bytes": CHUNK,
            "sequence_us": med, "sequences_per_s": {v: 1e6 / us for v, us in med.items()},
            "mib_per_s": {v: len(MESSAGE) / us for v, us in med.items()},
            "added_us_per_sequence": added, "added_us_per_update": added / len(CHUNKS),
            "added_percent": 100.0 * added / med["B"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="A/B rounds (default 9)")
    parser.add_argument("--sequences", type=int, default=40,
                        help="sign sequences per variant and round (default 40)")
    parser.add_argument("--calls", type=int, default=200_000,
                        help="ReplayJournal.add calls timed alone (default 200000)")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if min(args.rounds, args.sequences, args.calls // 16) < 1:
        parser.error("--rounds and --sequences must be at least 1, --calls at least 16")
    with tempfile.TemporaryDirectory() as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(2)
        try:
            provision_lab(lab)
            config = load_config(load(lab.conf_path), str(lab.conf_path))
            result = measure(config, lab.pin(), args.rounds, args.sequences)
        finally:
            lab.down(purge=True)
    result["journal_add_ns"] = journal_add_ns(args.calls)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print("## The multi-part journal's cost (RSA-2048 sign of 64 KiB in 4 KiB chunks, "
          "1 thread, 2 members)\n")
    print(table(["variant", "µs/sequence", "sequences/s", "MiB/s"],
                [[VARIANTS[v], num(result["sequence_us"][v]),
                  num(result["sequences_per_s"][v], 1), num(result["mib_per_s"][v], 2)]
                 for v in ("A", "B")]))
    print(f"\nJournal added {num(result['added_us_per_sequence'], 1)} µs a sequence "
          f"({num(result['added_us_per_update'], 2)} µs an update, "
          f"{num(result['added_percent'], 1)} %; median of {args.rounds} A/B rounds); "
          f"ReplayJournal.add alone: {num(result['journal_add_ns'])} ns an update.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
