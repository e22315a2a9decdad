#!/usr/bin/env python3
"""Start-up time of `hacli --help` and `hacli hagroup retry`, against bare Python.

    .venv/bin/python bench/startup.py [--runs 30]

Prints medians and the ratio to `python -c pass` measured in the same run, so
the figures compare across machines.  The goal is `hacli --help` < 150 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HACLI = str(Path(sys.executable).parent / "hacli")


def median_ms(cmd: list[str], runs: int) -> float:
    """Median wall time of ``cmd`` over ``runs`` runs, after one warm-up."""
    subprocess.run(cmd, capture_output=True, check=False)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=False)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        conf = work / "Chrystoki.conf"
        conf.write_text("Misc = {\n}\n")
        base = median_ms([sys.executable, "-c", "pass"], args.runs)
        cases = {
            "hacli --help": [HACLI, "--help"],
            "hacli hagroup retry --count 3": [HACLI, "--conf", str(conf), "hagroup", "retry",
                                             "--count", "3"],
            "hacli hagroup listgroups": [HACLI, "--conf", str(conf), "hagroup", "listgroups"],
        }
        print(f"{'command':34} {'median ms':>10} {'x python':>9}")
        print(f"{'python -c pass':34} {base:10.1f} {1.0:9.2f}")
        for name, cmd in cases.items():
            ms = median_ms(cmd, args.runs)
            print(f"{name:34} {ms:10.1f} {ms / base:9.2f}")
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
