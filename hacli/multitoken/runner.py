"""Run a mode on a target with N threads for S seconds and collect statistics."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
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
    #: True when Ctrl-C ended the run early: the figures cover the time it ran.
    interrupted: bool = False

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


@contextlib.contextmanager
def _ctrl_c_stops(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C calls ``stop()`` instead of raising KeyboardInterrupt, in the main
    thread (the only one signals reach); elsewhere nothing changes.

    A KeyboardInterrupt raised at an arbitrary point of the waiting thread can
    land inside a lock's release (the barrier's, a join's) and leave the
    workers blocked for good; a handler that only sets a flag cannot."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(target: Any, mode: str, threads: int, seconds: float,
        on_start: Callable[[], None] | None = None) -> Result:
    """Prepare ``mode`` on ``target`` (keys created or reused), then load it.

    Every thread runs the operation in a loop until ``seconds`` have passed;
    an exception or a wrong answer counts as an error, never stops the run.
    Ctrl-C during the timed part stops the threads after their current call
    and returns what they did so far (``interrupted``); the checks after the
    run are skipped then.  ``on_start`` is called as the timed part begins.
    """
    with target.worker() as ops:
        prepared = MODES[mode](target, ops)
    before = target.member_ops()
    result = Result(mode, target.name, threads, seconds, notes=list(prepared.notes))
    lock = threading.Lock()
    # a plain flag: set from a signal handler, which must take no lock
    stopped = [False]

    def stop() -> None:
        stopped[0] = result.interrupted = True

    # the clocks start when every worker has its session: the barrier's action
    # runs once all have arrived, before any is released
    clocks = {"deadline": 0.0, "start": 0.0, "cpu": 0.0}

    def go() -> None:
        clocks["cpu"] = time.process_time()
        clocks["start"] = time.perf_counter()
        clocks["deadline"] = clocks["start"] + seconds
        if on_start is not None:
            on_start()

    start = threading.Barrier(threads + 1, action=go)

    def count(errors: dict[str, int], e: BaseException) -> None:
        name = _error_name(e)
        errors[name] = errors.get(name, 0) + 1

    def work() -> None:
        lat: list[float] = []
        errors: dict[str, int] = {}
        try:
            with target.worker() as o:
                start.wait()
                deadline = clocks["deadline"]
                while (t0 := time.perf_counter()) < deadline and not stopped[0]:
                    try:
                        prepared.op(o)
                    except Exception as e:  # an error is a data point of a load test
                        count(errors, e)
                        continue
                    lat.append((time.perf_counter() - t0) * 1000)
        except threading.BrokenBarrierError:
            pass  # another worker could not start: nobody runs
        except Exception as e:  # no session for this worker: nobody runs
            count(errors, e)
            start.abort()
        with lock:
            result.latencies_ms += lat
            result.ops += len(lat)
            record(result, errors)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    with _ctrl_c_stops(stop):
        for t in pool:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait()
        for t in pool:
            t.join()
    started = clocks["start"] > 0
    result.seconds = time.perf_counter() - clocks["start"] if started else 0.0
    result.cpu_seconds = time.process_time() - clocks["cpu"] if started else 0.0
    after = target.member_ops()
    result.per_member = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    if result.interrupted:
        return result
    if prepared.after is None:
        return result
    try:
        with target.worker() as ops:
            wrong = prepared.after(ops)
    except Exception as e:  # e.g. every member down by now: the sample is unchecked
        result.notes.append("the checks after the run could not be made")
        record(result, {_error_name(e): 1})
        return result
    if wrong:
        record(result, {"WrongAnswer": wrong})
    return result


def _error_name(e: BaseException) -> str:
    """How an error is counted: its CKR name, else its class."""
    return getattr(e, "ckr", None) or type(e).__name__


def record(result: Result, errors: dict[str, int]) -> None:
    """Add counted errors to ``result``."""
    for k, v in errors.items():
        result.error_kinds[k] = result.error_kinds.get(k, 0) + v
        result.errors += v
