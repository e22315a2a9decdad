#!/usr/bin/env python3
"""Soak test of the HA slot: a mixed, checked load while members crash and freeze.

    .venv/bin/python bench/soak.py [--seconds 60] [--mode activeBasic|activeEnhanced]
                                   [--members 3] [--threads 8] [--seed N] [--standby]
                                   [--json]

A private 3-member lab in a temporary directory (its own Chrystoki.conf:
AutoReconnectInterval 5 s, ReceiveTimeout 3 s, ``--mode`` as
VirtualTokenActiveRecovery; with ``--standby`` the last member is a standby
member), 8 threads each with its own session on the HA slot, and a chaos
thread.  The lab is torn down (purged) at the end, always, also on Ctrl-C
(exit 130) or SIGTERM.

The load
--------
Every result is checked by something other than the call that made it:

* RSA-2048 ``SHA256_RSA_PKCS`` signatures: verified on the host against the
  public key's modulus and exponent (integer arithmetic, ``soak_check``); now
  and then also ``C_Verify`` through the slot, of the signature and of a
  tampered copy (must be True, then False);
* EC P-256 ``CKM_ECDSA`` over a host SHA-256: ``C_Verify`` through the slot with
  the public key every time, and a quarter of them verified on the host;
* AES-256 ``CKM_AES_CBC_PAD`` with a random IV: length and round trip (encrypt
  and decrypt usually land on different members); every fifth with a fixed IV
  and data, compared with the ciphertext made before the run.  The key is a
  *session* object, so every recovery must bring it back on the recovered
  member.  (``CKM_AES_ECB`` on block-sized data if the slot lacks CBC_PAD.);
* ``C_UnwrapKey`` (``CKM_AES_KEY_WRAP``, when the slot offers it): a blob made
  before the run (RFC 3394 over one wrapping key's ECB, the wrapped value
  known to the host) is unwrapped into a session key whose ECB ciphertext must
  equal that of a key created from the same value; then destroyed;
* multi-part sequences, which survive a member's failure by being replayed
  on another member from their journal (``MultipartJournalBytes``): an RSA
  ``SHA256_RSA_PKCS`` sign of up to 64 KiB in random chunks
  (``C_SignInit``/``Update``/``Final``), verified on the host; and, when the
  slot offers ``CKM_AES_CBC_PAD``, a multi-part encrypt of up to 32 KiB whose
  ciphertext must equal a single-part ``C_Encrypt`` with the same IV, then a
  multi-part decrypt of it that must give the data back (no byte repeated or
  lost across a replay).  Every step is a call of its own for the loss count;
* ``C_Digest`` SHA-256/SHA-512 compared with hashlib; ``C_GenerateRandom``
  length;
* key life cycles: session AES keys (generate, round trip, destroy), token AES
  keys and token EC key pairs with a unique label and ``CKA_ID`` (generate,
  use, then destroyed or kept).  Which token objects were destroyed and which
  kept is recorded by identity (class, key type, label, CKA_ID).

Each call's start, end and CKR name (``CKR_OK`` or the error) is recorded.  A
thread whose call failed waits 2 ms before its next operation (a client backs
off; a failing group is not hammered by a tight loop).

Chaos
-----
From about 1.5 s in, every 2-5 s one member is crashed (``lab.fail``, SIGKILL)
or frozen (``lab.hang``, SIGSTOP) and restored (``lab.restore``) 1.5-8 s later.
Faults stop ``interval + 3`` s before the end and every member is restored
then, so that each recovery can be watched while the load goes on.

A member is *established* when its lab process has been running, not frozen,
for at least ``AutoReconnectInterval + 2`` s (or since the start).  The victim
of a fault is a member that was restored at least 1 s ago (or never faulted)
and that the engine has shown in service for at least 0.5 s (so the recovery
of its previous fault is over, and measured, first); a fault is only injected
when another member that is *established* stays up.  That is stricter than
"never all members at once": at every moment some member has been back long
enough that the engine is *required* (by the recovery bound checked below) to
have it in service, so a group that goes down is the engine's fault, whatever
recovery policy one has in mind.  A member the lab itself fails to restore
(three attempts) stays out for good and is left out of every check on the
engine (the lab error still fails the run).

"In service", and what counts as a loss
---------------------------------------
From the lab's point of view.  A fault's outage runs from just *before*
``lab.fail``/``lab.hang`` is called until just *after* ``lab.restore`` returns
(the lab's restore returns once the server serves its token through the
socket): the bracket is wide in the engine's favour.  A member is **in
service for a call** that ran from ``a`` to ``b`` when none of its outages
overlaps ``[a - 0.5 s, b]``: it was running and not frozen for the whole call
and for more than 0.5 s before it.

A failed call is a **loss** when at least one member was in service for it.
A failed call with no member in service is *excused* (the chaos rule above
means there should be none).  A member restored 0.5 s before a call counts,
although the engine may not have reconnected to it yet: the chaos rule makes
sure an established member is there as well, so this never decides a loss on
its own.  A call that meets a frozen member may take up to ReceiveTimeout and
still succeed: that is latency, not a loss.

Checks (any failure: exit 1)
----------------------------
* no lost call, no wrong result, no harness error;
* every member back in service within ``interval + 2`` s of its restore, as
  ``group.member_states()`` shows it (polled every 20 ms, which never makes a
  call into a member).  A fault the engine never noticed (e.g. a freeze shorter
  than ReceiveTimeout that calls simply waited out) counts as back at once.
  Every member alive at the end.  (The origin pseudo-code recovers one member
  per attempt, every X s, from one timer that every new failure restarts: two
  members restored together can need 2X.  The issue asks for X + 2 s, and
  that is what is checked.);
* after the run, ``group.synchronize(pin)`` complete, and OpenSC's
  ``pkcs11-tool -O`` on every member (through ``libsofthsm2.so`` and that
  member's own softhsm2.conf; the PIN reaches that child in its environment only) lists the
  same token objects (class, key type, label, ID), every kept key, and no
  destroyed one;
* after ``engine.close()``: no thread left that was not there before the
  engine started, no member connection left open (p11-kit forks one
  ``p11-kit-remote`` per client connection into the member's process group),
  no ``hacli-*`` work directory left (the run points ``tempfile.tempdir`` at a
  private directory, so every engine work directory of this process is
  there and only there); after ``lab.down()``: no lab process.

Output: a table (calls, failovers and recoveries as the engine's member
counters say, latency p50/p99/max of the calls that succeeded, errors by CKR,
outage seconds = time covered by lost calls, every fault with when the engine
noticed it and when the member was back, members the engine marked down with
no fault on them, per-operation figures, the engine's HA log with times since
the start when something failed) or ``--json`` (the same and more: every
outage, error samples, latency of all calls, the HA log).
Exit 0 all checks passed, 1 a check failed, 2 usage or set-up error, 130
interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soak_check import (
    Identity,
    merge_intervals,
    parse_pkcs11_tool_objects,
    percentile,
    union_length,
)
from soak_load import (
    RECOVERY_SLACK,
    Chaos,
    Fault,
    Interrupted,
    Monitor,
    Recorder,
    Timeline,
    Worker,
    bounded,
    error_name,
    is_alive,
    make_fixed,
    now,
)

from hacli.conf.model import load_config
from hacli.conf.store import load
from hacli.engine import Engine
from hacli.lab import Lab, find_tools
from hacli.lab.procs import group_pids, pids_with_arg, wait_until
from hacli.lab.provision import provision_lab

MODES = ("activeBasic", "activeEnhanced")
#: A fault is "noticed" by the engine if it marks the member down up to this long after restore.
NOTICE_GRACE = 1.0
PIN_ENV = "HACLI_SOAK_PIN"


class Soak:
    def __init__(self, args: argparse.Namespace, lab: Lab, workroot: Path,
                 log: Callable[[str], None]):
        self.args = args
        self.lab = lab
        self.workroot = workroot
        self.log = log
        self.rng = random.Random(args.seed)
        self.stop = threading.Event()
        self.rec = Recorder()
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.engine: Engine | None = None
        self.group: Any = None
        self.threads: list[threading.Thread] = []
        self.timeout_s = 3.0  # until the configuration is read
        self.engine_unsafe = False

    # -- set-up --------------------------------------------------------------
    def setup(self) -> None:
        self.lab.up(self.args.members)
        provision_lab(self.lab)  # as `hacli lab up` and the test fixtures do
        base = load_config(load(self.lab.conf_path), str(self.lab.conf_path))
        groups = base.groups
        if self.args.standby:
            # a standby serves only while no active member does: the same
            # checks hold (a call is lost when any member was in service)
            groups = tuple(dataclasses.replace(g, standby=g.members[-1:]) for g in groups)
        self.config = dataclasses.replace(
            base, groups=groups,
            settings=dataclasses.replace(base.settings, recovery_mode=self.args.mode))
        self.interval = float(self.config.settings.auto_reconnect_interval)
        self.timeout_s = self.config.settings.receive_timeout_ms / 1000.0
        self.pin = self.lab.pin()
        self.members = {m.serial: m.label for m in self.lab.members()}
        self.timeline = Timeline(list(self.members))
        self.threads_before = set(threading.enumerate())
        try:
            bounded(self._start_engine, 120, "setup")
        except TimeoutError:
            self.engine_unsafe = True  # a call of the set-up is still running in it
            raise

    def _start_engine(self) -> None:
        self.engine = Engine(self.config)
        self.group = self.engine.group(self.lab.group_label)
        self.session = self.group.open_session()
        self.session.login(self.pin)
        self.fixed = make_fixed(self.session, self.rec, self.notes)

    def member_states(self) -> dict[str, bool]:
        """``group.member_states()`` as alive flags, bounded (the harness never blocks on it)."""
        states = bounded(self.group.member_states, 10, "member-states")
        return {s: is_alive(v) for s, v in states.items()}

    # -- the run ---------------------------------------------------------------
    def run(self) -> None:
        g = self.group
        self.start_counters = {m.serial: (m.failures, m.recoveries) for m in g.members}
        self.t_start = now()
        self.wall_start = time.time()
        self.deadline = self.t_start + self.args.seconds
        self.chaos_end = self.deadline - (self.interval + RECOVERY_SLACK + 1.0)
        self.monitor = Monitor(g, list(self.members))
        self.monitor.start()
        self.chaos = Chaos(self)
        workers = [Worker(self, i, random.Random(self.rng.random()))
                   for i in range(self.args.threads)]
        self.threads = [self.monitor, self.chaos, *workers]
        self.chaos.start()
        for w in workers:
            w.start()
        while now() < self.deadline:
            time.sleep(min(0.2, max(0.0, self.deadline - now())))
        self.t_load_end = now()
        self.quiesce()
        # every restore happened before chaos_end; wait (bounded) for the last recovery
        last = max((f.t_restored or 0.0 for f in self.timeline.snapshot()), default=0.0)
        wait_until(self._all_alive, max(0.0, last + self.interval + RECOVERY_SLACK - now()), 0.05)
        try:
            self.end_states = self.member_states()
        except TimeoutError as exc:
            self.problems.append(f"group.member_states(): {exc}")
            self.end_states = dict.fromkeys(self.members, False)
        self.end_counters = {m.serial: (m.failures, m.recoveries) for m in g.members}
        self.monitor.stop.set()
        self.monitor.join(5)

    def _all_alive(self) -> bool:
        try:
            return all(self.member_states().values())
        except TimeoutError:
            return False

    def lab_lost(self) -> set[str]:
        """Members the lab failed to restore (left out of the engine's checks)."""
        return {f.serial for f in self.timeline.snapshot() if f.lab_failed}

    def quiesce(self) -> None:
        """Stop the load and the chaos (which restores every member), bounded.

        Also the first step of an interrupted run: the engine must not be
        closed under a call that is still running in one of its modules.
        """
        self.stop.set()
        chaos = getattr(self, "chaos", None)
        if chaos is not None and chaos.is_alive():
            chaos.join(self.lab.timeout * 3 * len(getattr(self, "members", ())) + 5)
            if chaos.is_alive():
                self.problems.append("the chaos thread did not finish (a lab command hung)")
        workers = [t for t in self.threads if isinstance(t, Worker)]
        join_by = now() + 3 * self.timeout_s + 15
        for w in workers:
            w.join(max(0.0, join_by - now()))
        stuck = [w.name for w in workers if w.is_alive()]
        if stuck:
            self.problems.append(f"workers stuck in a call after the run: {', '.join(stuck)}")

    def stuck(self) -> bool:
        """True when one of the run's threads is still inside a call."""
        return any(t.is_alive() for t in self.threads if not isinstance(t, Monitor))

    # -- after the run ---------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Synchronise, compare the members, close the engine, check for leaks."""
        result: dict[str, Any] = {}
        g = self.group
        try:
            report = bounded(lambda: g.synchronize(self.pin), 120, "synchronize")
            result["sync"] = {"complete": report.complete, "copied": len(report.copied),
                              "failed": [f"{f.serial} {f.object.describe()}: {f.ckr}"
                                         for f in report.failed][:20],
                              "unreachable": list(report.unreachable)}
            if not report.complete:
                self.problems.append(f"synchronize incomplete: {len(report.failed)} failed, "
                                     f"unreachable {list(report.unreachable)}")
        except Exception as exc:
            result["sync"] = {"error": f"{error_name(exc)}: {exc}"}
            self.problems.append(f"synchronize failed: {error_name(exc)} {exc}")
        try:
            diff = bounded(lambda: g.inventory_diff(self.pin), 60, "inventory_diff")
            result["in_sync"] = diff.in_sync
        except Exception as exc:
            result["in_sync"] = None
            self.problems.append(f"inventory_diff failed: {error_name(exc)} {exc}")
        self.close_engine()
        result["ha_log"] = self.ha_log()
        result["leaks"] = self.leaks()
        result["objects"] = self.compare_members()
        return result

    def ha_log(self) -> list[str]:
        """The engine's HA log of the run, times as seconds since the load started."""
        path = self.config.settings.ha_log_path
        if not (self.config.settings.ha_log_enabled and path):
            return []
        try:
            text = (Path(path) / "haErrorLog.txt").read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            try:
                at = datetime.datetime.fromisoformat(parts[0]).timestamp() - self.wall_start
            except ValueError:
                continue
            member = self.members.get(parts[2], parts[2])
            out.append(f"{at:7.2f} {member} {' '.join(parts[3:])}")
        return out

    def close_engine(self) -> None:
        if self.engine is None:
            return
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.stop.set()
            monitor.join(2)
        if self.stuck() or self.engine_unsafe:
            # unloading a module under a running call can crash the process before
            # the lab is torn down: leave the engine to the exit
            self.problems.append("engine not closed: a thread of the run is still in a call")
            self.engine = None
            return
        engine, self.engine = self.engine, None
        session = getattr(self, "session", None)
        if session is not None:
            with contextlib.suppress(Exception):
                bounded(session.close, self.timeout_s + 5, "session-close")
        try:
            bounded(engine.close, 3 * self.timeout_s + 15, "engine-close")
        except Exception as exc:
            self.problems.append(f"engine.close(): {error_name(exc)} {exc}")

    def leaks(self) -> dict[str, Any]:
        mine = {t for t in self.threads if t.is_alive()}

        def extra() -> list[threading.Thread]:
            return [t for t in threading.enumerate()
                    if t not in self.threads_before and t not in mine
                    and not t.name.startswith("soak-")]

        wait_until(lambda: not extra(), 5.0, 0.05)
        threads = sorted(t.name for t in extra())
        if threads:
            self.problems.append(f"threads left after engine.close(): {threads}")
        connections: dict[str, int] = {}

        def open_connections() -> dict[str, int]:
            out = {}
            for st in self.lab.status().members:
                if st.pid:
                    out[st.label] = len([p for p in group_pids(st.pid) if p != st.pid])
            return out

        wait_until(lambda: not any(open_connections().values()), 5.0, 0.05)
        connections = {k: v for k, v in open_connections().items() if v}
        if connections:
            self.problems.append(f"member connections left open after engine.close(): "
                                 f"{connections}")
        workdirs = sorted(p.name for p in self.workroot.iterdir() if p.name.startswith("hacli-"))
        if workdirs:
            self.problems.append(f"work directories left after engine.close(): {workdirs}")
        return {"threads": threads, "connections": connections, "workdirs": workdirs}

    def compare_members(self) -> dict[str, Any]:
        tool = shutil.which("pkcs11-tool")
        if tool is None:
            self.problems.append("pkcs11-tool not found (Debian package opensc): "
                                 "members not compared")
            return {"error": "pkcs11-tool not found"}
        env = dict(os.environ)
        env[PIN_ENV] = self.pin
        listing: dict[str, Counter[Identity]] = {}
        lost = {self.members[s] for s in self.lab_lost()}
        if lost:
            self.notes.append(f"not compared (the lab could not restore them): {sorted(lost)}")
        for label in self.members.values():
            if label in lost:
                continue
            try:
                out = subprocess.run(
                    [tool, "--module", find_tools().softhsm2, "--token-label", label, "--login",
                     "--pin", f"env:{PIN_ENV}", "-O"],
                    # each member's token is in its own token directory
                    env={**env, **self.lab.member(label).softhsm2_env},
                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    timeout=60, check=False)
            except subprocess.TimeoutExpired:
                self.problems.append(f"pkcs11-tool on {label} did not finish in 60 s")
                continue
            if out.returncode != 0:
                self.problems.append(f"pkcs11-tool on {label}: exit {out.returncode} "
                                     f"{out.stderr.strip().splitlines()[-1:]}")
                continue
            listing[label] = parse_pkcs11_tool_objects(out.stdout)
        union: Counter[Identity] = Counter()
        for objs in listing.values():
            union |= objs
        differences = {}
        for label, objs in listing.items():
            missing = sorted(" ".join(i) for i in (union - objs))
            if missing:
                differences[label] = missing[:10]
        identical = len(listing) == len(self.members) - len(lost) and not differences
        if listing and differences:
            self.problems.append(f"members differ after synchronize: {differences}")
        back = []
        for ident, t in sorted(self.rec.destroyed.items(), key=lambda kv: kv[1]):
            if union[ident]:
                out = [self.members[f.serial] for f in self.timeline.snapshot()
                       if f.t_fault <= t <= f.end()]
                on = [label for label, objs in listing.items() if objs[ident]]
                back.append(f"{' '.join(ident)} (destroyed at {t - self.t_start:.2f} s "
                            f"while out: {out or 'none'}; now on {on})")
        if back:
            self.problems.append(f"{len(back)} destroyed objects back: {back[:5]}")
        missing_kept = sorted(" ".join(i) for i in self.rec.kept
                              if any(not objs[i] for objs in listing.values()))
        if missing_kept:
            self.problems.append(f"kept objects missing on a member: {missing_kept[:10]}")
        return {"identical": identical, "per_member": {k: sum(v.values())
                                                        for k, v in listing.items()},
                "differences": differences, "kept": len(self.rec.kept),
                "destroyed": len(self.rec.destroyed), "uncertain": len(self.rec.uncertain),
                "destroyed_back": back, "kept_missing": missing_kept}

    def teardown_lab(self) -> list[int]:
        """lab.down(), the processes left by it, then purge.  Always safe to call."""
        left: list[int] = []
        try:
            members = self.lab.members() if self.lab.exists() else []
            pids = [st.pid for st in self.lab.status().members if st.pid] if members else []
            self.lab.down()
            found: set[int] = set()
            for pid in pids:
                found.update(group_pids(pid))
            for m in members:
                found.update(pids_with_arg(m.uri))
            left = sorted(found)
        except Exception as exc:
            self.problems.append(f"lab down: {exc}")
        finally:
            try:
                self.lab.down(purge=True)
            except Exception as exc:
                self.problems.append(f"lab purge: {exc}")
        if left:
            self.problems.append(f"lab processes left after down(): {left}")
        return left

    # -- analysis --------------------------------------------------------------
    def analyse(self) -> dict[str, Any]:
        faults = self.timeline.snapshot()
        calls = self.rec.calls
        t0 = self.t_start
        failed = [c for c in calls if c[3] is not None]
        served = [bool(self.timeline.in_service(c[1], c[2], faults)) for c in failed]
        lost = [c for c, sv in zip(failed, served, strict=True) if sv]
        excused = [c for c, sv in zip(failed, served, strict=True) if not sv]
        lat = sorted((c[2] - c[1]) * 1000 for c in calls)
        lat_ok = sorted((c[2] - c[1]) * 1000 for c in calls if c[3] is None)
        per_op: dict[str, dict[str, Any]] = {}
        for op in sorted({c[0] for c in calls}):
            mine = sorted((c[2] - c[1]) * 1000 for c in calls if c[0] == op)
            per_op[op] = {"calls": len(mine),
                          "failed": sum(1 for c in failed if c[0] == op),
                          "p50_ms": round(percentile(mine, 0.5), 2),
                          "p99_ms": round(percentile(mine, 0.99), 2),
                          "max_ms": round(mine[-1], 1) if mine else 0.0}
        outages = []
        for a, b in merge_intervals([(c[1], c[2]) for c in lost], gap=0.2):
            inside = [c for c in lost if a <= c[1] and c[2] <= b]
            outages.append({"start_s": round(a - t0, 2), "seconds": round(b - a, 2),
                            "calls": len(inside),
                            "ckr": dict(Counter(c[3] for c in inside).most_common()),
                            "faults_active": [f"{f.label} {f.kind}" for f in faults
                                              if f.t_fault <= b and f.end() >= a]})
        # the engine's view (monitor) against the lab's
        down = self.monitor.down_intervals()
        fault_rows = []
        late = []
        for f in faults:
            row = self._fault_row(f, down.get(f.serial, []), lost)
            fault_rows.append(row)
            if row["back_in_time"] is False:
                late.append(f"{f.label} ({row['kind']} at {row['at_s']} s)")
        spurious = []
        for serial, ivs in down.items():
            for a, b in ivs:
                if not any(f.serial == serial and a <= f.end() + NOTICE_GRACE
                           and (b is None or b >= f.t_fault) for f in faults):
                    spurious.append({"member": self.members[serial], "at_s": round(a - t0, 2),
                                     "seconds": None if b is None else round(b - a, 2)})
        group_down = 0.0
        for a, b in self.monitor.group_down_intervals():
            t = a
            while t < b:
                step = min(0.01, b - t)
                if self.timeline.in_service(t, t + step, faults):
                    group_down += step
                t += step
        fail_d = sum(self.end_counters[s][0] - self.start_counters[s][0] for s in self.members)
        rec_d = sum(self.end_counters[s][1] - self.start_counters[s][1] for s in self.members)
        if lost:
            self.problems.append(f"{len(lost)} calls failed while a member was in service "
                                 f"({dict(Counter(c[3] for c in lost).most_common())})")
        if excused:
            self.problems.append(f"{len(excused)} calls failed while no member was in service "
                                 "(the chaos rule should prevent this)")
        if self.rec.wrong:
            self.problems.append(f"{len(self.rec.wrong)} wrong results: "
                                 f"{Counter(w[2] for w in self.rec.wrong).most_common(5)}")
        if self.rec.harness:
            self.problems.append(f"{len(self.rec.harness)} harness errors: "
                                 f"{self.rec.harness[:3]}")
        if self.monitor.errors:
            self.problems.append(f"group.member_states() raised: {self.monitor.errors}")
        if late:
            self.problems.append(f"members not back within {self.interval + RECOVERY_SLACK:g} s "
                                 f"of their restore: {late}")
        not_alive = [self.members[s] for s, a in self.end_states.items()
                     if not a and s not in self.lab_lost()]
        if not_alive:
            self.problems.append(f"members not in service at the end: {not_alive}")
        return {
            "calls": len(calls), "ok": len(calls) - len(failed), "failed": len(failed),
            "lost": len(lost), "excused": len(excused), "wrong": len(self.rec.wrong),
            "wrong_results": [{"op": w[0], "at_s": round(w[1] - t0, 2), "what": w[2]}
                              for w in self.rec.wrong[:20]],
            "failovers": fail_d, "recoveries": rec_d,
            # latency of the calls that succeeded (a failing call can return in microseconds)
            "p50_ms": round(percentile(lat_ok, 0.5), 2),
            "p99_ms": round(percentile(lat_ok, 0.99), 2),
            "max_ms": round(lat_ok[-1], 1) if lat_ok else 0.0,
            "all_calls_latency_ms": {"p50": round(percentile(lat, 0.5), 2),
                                     "p99": round(percentile(lat, 0.99), 2),
                                     "max": round(lat[-1], 1) if lat else 0.0},
            "errors": dict(Counter(c[3] for c in failed).most_common()),
            "error_samples": dict(self.rec.messages),
            "outage_s": round(union_length([(c[1], c[2]) for c in lost]), 2),
            "group_down_s": round(group_down, 2),
            "member_states_slowest_s": round(self.monitor.slowest_poll, 3),
            "outages": outages, "faults": fault_rows, "late_recoveries": late,
            "spurious_member_failures": spurious, "end_alive": {
                self.members[s]: a for s, a in self.end_states.items()},
            "per_op": per_op,
        }

    def _fault_row(self, f: Fault, down: list[tuple[float, float | None]],
                   lost: list[tuple[str, float, float, str | None]]) -> dict[str, Any]:
        t0 = self.t_start
        restored = f.end()
        # the engine's down intervals that belong to this fault (the monitor saw the
        # member in service just before it: chaos only faults such members)
        noticed = [(a, b) for a, b in down
                   if f.t_fault - 0.1 <= a <= restored + NOTICE_GRACE]
        if f.t_restored is None:
            back: float | None = None
        elif not noticed:
            back = 0.0
        elif any(b is None for _, b in noticed):
            back = None
        else:
            back = max(0.0, max(b for _, b in noticed if b is not None) - restored)
        bound = self.interval + RECOVERY_SLACK
        in_time: bool | None = back is not None and back <= bound
        if f.lab_failed:
            in_time = None  # the lab never brought it back: nothing to hold against the engine
        return {
            "member": f.label, "kind": f.kind, "at_s": round(f.t_fault - t0, 2),
            "down_s": None if f.t_restored is None else round(f.t_restored - f.t_fault, 2),
            "engine_noticed_after_s": round(min(a for a, _ in noticed) - f.t_fault, 2)
            if noticed else None,
            "back_after_restore_s": None if back is None else round(back, 2),
            "back_in_time": in_time,
            "lost_calls": sum(1 for c in lost if c[1] <= restored and c[2] >= f.t_fault),
            "lab_error": f.error,
        }


# ---------------------------------------------------------------------------
# output


def render(report: dict[str, Any]) -> str:
    r = report
    lines = [
        f"soak: {r['mode']}, {r['seconds']:g} s, {r['members']} members, {r['threads']} threads, "
        f"AutoReconnectInterval {r['interval_s']:g} s, ReceiveTimeout {r['receive_timeout_ms']} "
        f"ms, seed {r['seed']}",
    ]
    if r.get("notes"):
        lines += [f"note: {n}" for n in r["notes"]]
    if "calls" not in r:
        lines.append("no results (the run did not start)")
    else:
        head = ("calls", "failed", "lost", "wrong", "failovers", "recoveries", "p50 ms*",
                "p99 ms*", "max ms*", "outage s")
        row = (r["calls"], r["failed"], r["lost"], r["wrong"], r["failovers"], r["recoveries"],
               f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['max_ms']:.1f}",
               f"{r['outage_s']:.2f}")
        widths = [max(len(str(h)), len(str(v))) for h, v in zip(head, row, strict=True)]
        lines.append("  ".join(str(h).rjust(w) for h, w in zip(head, widths, strict=True)))
        lines.append("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))
        lines.append(f"(* successful calls; outage s: time covered by calls that failed while "
                     f"a member was in service; group down in the engine's view meanwhile: "
                     f"{r['group_down_s']:.2f} s; slowest group.member_states(): "
                     f"{r['member_states_slowest_s'] * 1000:.0f} ms)")
        if r["errors"]:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in r["errors"].items()))
        lines.append("")
        lines.append("faults:  at s  member    kind  down s  noticed after s  back after "
                     "restore s  lost calls")
        for f in r["faults"]:
            noticed = "-" if f["engine_noticed_after_s"] is None else f["engine_noticed_after_s"]
            back = "never" if f["back_after_restore_s"] is None else f["back_after_restore_s"]
            flag = {True: "", False: "  LATE", None: "  (lab could not restore)"}[
                f["back_in_time"]]
            lines.append(f"        {f['at_s']:6.2f}  {f['member']:<8}  {f['kind']:<4}  "
                         f"{f['down_s'] if f['down_s'] is not None else '-':>6}  "
                         f"{noticed:>15}  {back:>20}  {f['lost_calls']:>10}{flag}")
        for o in r["outages"]:
            lines.append(f"outage at {o['start_s']} s for {o['seconds']} s: {o['calls']} calls "
                         f"{o['ckr']} (faults: {', '.join(o['faults_active']) or 'none'})")
        for sp in r["spurious_member_failures"]:
            lines.append(f"engine marked {sp['member']} down at {sp['at_s']} s with no fault "
                         f"on it ({sp['seconds']} s)")
        lines.append("")
        lines.append("op                   calls  failed   p50 ms   p99 ms    max ms")
        for op, st in r["per_op"].items():
            lines.append(f"{op:<19} {st['calls']:>6}  {st['failed']:>6}  {st['p50_ms']:>7.2f}  "
                         f"{st['p99_ms']:>7.2f}  {st['max_ms']:>8.1f}")
        for ckr, samples in r.get("error_samples", {}).items():
            for text in samples[:2]:
                lines.append(f"  {ckr}: {text}")
    obj = r.get("objects", {})
    if obj:
        lines.append("")
        lines.append(f"members after synchronize: identical={obj.get('identical')} "
                     f"objects {obj.get('per_member')} kept {obj.get('kept')} "
                     f"destroyed {obj.get('destroyed')} uncertain {obj.get('uncertain')}")
    if r.get("ha_log"):
        events = Counter(line.split()[2] for line in r["ha_log"] if len(line.split()) > 2)
        lines.append("HA log: " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
        if r["problems"]:
            lines += [f"  {line}" for line in r["ha_log"][:60]]
    if "leaks" in r:
        lk = r["leaks"]
        lines.append(f"leaks: threads {lk['threads'] or 'none'}, connections "
                     f"{lk['connections'] or 'none'}, work dirs {lk['workdirs'] or 'none'}, "
                     f"lab processes {r.get('lab_processes_left') or 'none'}")
    lines.append("")
    if r["problems"]:
        lines.append("FAILED:")
        lines += [f"  - {p}" for p in r["problems"]]
    else:
        lines.append("OK: no loss, no wrong result, recoveries in time, members identical, "
                     "nothing leaked")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    p.add_argument("--mode", choices=MODES, default="activeBasic",
                   help="VirtualTokenActiveRecovery (default activeBasic)")
    p.add_argument("--members", type=int, default=3, help="lab members (default 3)")
    p.add_argument("--threads", type=int, default=8, help="threads on the HA slot (default 8)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--standby", action="store_true",
                   help="make the last member a standby member (VirtualTokenNNStandby)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.seconds < 5 or args.members < 2 or args.threads < 1:
        p.error("--seconds >= 5, --members >= 2, --threads >= 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(text: str) -> None:
        print(f"soak: {text}", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: Any) -> None:
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_term)
    workroot = Path(tempfile.mkdtemp(prefix="hacli-soak-"))
    # Every temporary directory this process makes (engine library copies,
    # transport-key provisioning) lands here, so a leak is ours and is seen.
    tempfile.tempdir = str(workroot)
    lab = Lab(workroot / "lab")
    soak = Soak(args, lab, workroot, log)
    report: dict[str, Any] = {"mode": args.mode, "seconds": args.seconds,
                              "members": args.members, "threads": args.threads,
                              "seed": args.seed, "interval_s": 0, "receive_timeout_ms": 0}
    status = 0
    try:
        try:
            log(f"lab up in {lab.directory} ({args.members} members)")
            soak.setup()
        except Exception as exc:  # one line, not a traceback; the lab still goes down
            soak.problems.append(f"set-up failed: {error_name(exc)} {exc}")
            status = 2
        else:
            report.update(interval_s=soak.interval,
                          receive_timeout_ms=soak.config.settings.receive_timeout_ms)
            log(f"{args.mode}: {args.seconds:g} s, {args.threads} threads, seed {args.seed}")
            soak.run()
            log("load done; synchronising and comparing the members")
            report.update(soak.analyse())
            report.update(soak.finish())
    except (KeyboardInterrupt, Interrupted):
        soak.stop.set()
        status = 130
        log("interrupted: tearing the lab down")
    finally:
        # Teardown must finish: a second Ctrl-C or a TERM would leave servers behind.
        old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            soak.quiesce()
            soak.close_engine()
            report["lab_processes_left"] = soak.teardown_lab()
        finally:
            shutil.rmtree(workroot, ignore_errors=True)
            signal.signal(signal.SIGINT, old_int)
    report["notes"] = soak.notes
    report["problems"] = soak.problems
    if status != 130:
        report["passed"] = not soak.problems
        if args.json:
            print(json.dumps(report, indent=1, default=str))
        else:
            print(render(report))
        if status == 0 and soak.problems:
            status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck or soak.stuck():
        os._exit(status)  # a thread stuck in a module call must not hang the exit
    return status


if __name__ == "__main__":
    sys.exit(main())
