"""Run a mode on a target with N threads for S seconds and collect statistics."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hacli.multitoken.modes import MODES


@dataclass
class Result:
    """The outcome of one run; :meth:`as_dict` is the ``--json`` contract."""

    mode: str
    slot: str
    threads: int
    seconds: float
    ops: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    per_member: dict[str, int] = field(default_factory=dict)
    error_kinds: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: CPU time of the whole process (every thread) during the timed part, in
    #: seconds: what the load cost the client (not in :meth:`as_dict`).
    cpu_seconds: float = 0.0

    def percentile(self, p: float) -> float:
        """The p-th latency percentile in ms (nearest rank), 0 without samples."""
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))
        return ordered[rank]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "slot": self.slot, "threads": self.threads,
            "seconds": round(self.seconds, 3), "ops": self.ops, "errors": self.errors,
            "ops_per_s": round(self.ops_per_s, 1), "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3), "per_member": self.per_member,
        }


def run(target: Any, mode: str, threads: int, seconds: float) -> Result:
    """Prepare ``mode`` on ``target`` (keys created or reused), then load it.

    Every thread runs the operation in a loop until ``seconds`` have passed;
    an exception or a wrong answer counts as an error, never stops the run.
    """
    with target.worker() as ops:
        prepared = MODES[mode](target, ops)
    before = target.member_ops()
    result = Result(mode, target.name, threads, seconds, notes=list(prepared.notes))
    lock = threading.Lock()
    # the clocks start when every worker has its session: the barrier's action
    # runs once all have arrived, before any is released
    clocks = {"deadline": 0.0, "start": 0.0, "cpu": 0.0}

    def go() -> None:
        clocks["cpu"] = time.process_time()
        clocks["start"] = time.perf_counter()
        clocks["deadline"] = clocks["start"] + seconds

    start = threading.Barrier(threads + 1, action=go)

    def work() -> None:
        lat: list[float] = []
        errors: dict[str, int] = {}
        with target.worker() as o:
            start.wait()
            deadline = clocks["deadline"]
            while (t0 := time.perf_counter()) < deadline:
                try:
                    prepared.op(o)
                except Exception as e:  # an error is a data point of a load test
                    name = getattr(e, "ckr", None) or type(e).__name__
                    errors[name] = errors.get(name, 0) + 1
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
        with lock:
            result.latencies_ms += lat
            result.ops += len(lat)
            for k, v in errors.items():
                result.error_kinds[k] = result.error_kinds.get(k, 0) + v
                result.errors += v

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    for t in pool:
        t.join()
    result.seconds = time.perf_counter() - clocks["start"]
    result.cpu_seconds = time.process_time() - clocks["cpu"]
    after = target.member_ops()
    result.per_member = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    with target.worker() as ops:
        wrong = prepared.after(ops)
    if wrong:
        result.errors += wrong
        result.error_kinds["WrongAnswer"] = result.error_kinds.get("WrongAnswer", 0) + wrong
    return result
