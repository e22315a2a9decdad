#!/usr/bin/env python3
"""Configuration soak: many concurrent ``hacli`` writers and SIGKILLs against one file.

    .venv/bin/python bench/confsoak.py [--runs 1000] [--concurrency 16]
                                       [--kill-fraction 0.15] [--seed N] [--json]

One Chrystoki.conf (a copy of ``docs/examples/Chrystoki.conf`` plus a few base
groups) in a temporary directory, and ``--runs`` real ``hacli`` processes
against it, ``--concurrency`` at a time.  Each run makes one change that no
other run makes, so every change can be looked for afterwards:

* ``hagroup creategroup -l cNNNN -se <two fresh serials>``;
* ``conf set Soak kNNNN vNNNN``;
* ``hagroup addmember -g baseN -se <a fresh serial>``;
* ``hagroup deletegroup -l cMMMM`` of a group whose creation was acknowledged
  (the deletion renumbers every group above it: the largest rewrite there is).
  Deletions keep the number of groups well below the 100 that
  ``VirtualTokenNN`` allows.

A random ``--kill-fraction`` of the runs gets SIGKILL at a random moment of
its life: from start-up to a little past how long runs take at the moment.
Exit 0 is an acknowledgement.  The report counts the killed runs whose change
was in place all the same (killed between the rename and the exit) and those
that were caught writing (their temporary file was seen: a lower bound, as
the next writer removes it).  Both windows are short, so most kills land
before the write.  The checks:

* after every run ends (killed or not) the file parses and its HA model
  validates (:func:`hacli.conf.model.load_config`);
* at the end: every acknowledged change is there (creations with their exact
  serial and members, keys with their value, members in their group), every
  acknowledged deletion is gone, nothing is there that no run asked for, no
  line of the sections no run touches changed, and no run that was not killed
  failed;
* one last ordinary write leaves no temporary file behind (a killed writer's
  temporary is removed by the next write).

Exit status 0 when every check held, 1 otherwise.  ``make soak`` runs it with
1,000 runs; ``tests/test_confsoak.py`` runs 60.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hacli.conf import haedit, store
from hacli.conf.document import Document
from hacli.conf.model import HASYNC, VT, load_config
from hacli.errors import ConfError, ExitStatus

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "Chrystoki.conf"
HACLI = str(Path(sys.executable).parent / "hacli")
#: the section ``conf set`` runs write (not an HA section: any key is allowed)
SOAK_SECTION = "Soak"
#: groups that exist from the start and receive ``addmember`` runs
BASE_GROUPS = 4
#: above this many groups that may exist, the next creation becomes a deletion
MAX_GROUPS = 60
#: a run this slow is a hang, not a slow machine
RUN_TIMEOUT = 120.0


@dataclass
class Run:
    """One planned ``hacli`` run and what became of it."""

    index: int
    kind: str  # "create", "set", "addmember", "delete"
    args: list[str]
    target: str  # the group label, key or member serial the change is about
    kill_after: float | None = None  # seconds; None: let it finish
    code: int | None = None  # exit status; negative: killed by that signal
    stderr: str = ""
    seconds: float = 0.0  # how long it ran
    left_temporary: bool = False  # killed while writing: its temporary file was there

    @property
    def killed(self) -> bool:
        return self.code is not None and self.code < 0

    @property
    def acknowledged(self) -> bool:
        return self.code == ExitStatus.OK


@dataclass
class Plan:
    """What the runs asked for and what was acknowledged, for the final check."""

    base_members: dict[str, list[str]] = field(default_factory=dict)  # groups at the start
    created: dict[str, Run] = field(default_factory=dict)  # label -> its creation
    deleting: dict[str, Run] = field(default_factory=dict)  # label -> its deletion
    sets: dict[str, Run] = field(default_factory=dict)  # key -> its run
    added: dict[str, Run] = field(default_factory=dict)  # serial -> its run
    untouched: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


def group_serials(label: str) -> tuple[str, str, str]:
    """(group serial, first member, second member) of creation ``label`` = cNNNN."""
    n = int(label[1:])
    return f"1{7_000_000 + 2 * n}", str(7_000_000 + 2 * n), str(7_000_000 + 2 * n + 1)


def prepare(path: Path) -> Plan:
    """Write the starting file: the example configuration plus the base groups."""
    shutil.copyfile(EXAMPLE, path)
    plan = Plan()
    with store.edit(path) as doc:
        for b in range(BASE_GROUPS):
            haedit.create_group(doc, f"base{b}", [str(6_000_000 + b)])
    doc = store.load(path)
    plan.base_members = {g.label: list(g.members) for g in load_config(doc).groups}
    plan.untouched = {s: doc.items(s) for s in doc.sections()
                      if s.casefold() not in {VT.casefold(), HASYNC.casefold()}}
    return plan


class Scheduler:
    """Hands out the next run (its kind depends on what was acknowledged so far)."""

    def __init__(self, conf: Path, plan: Plan, rng: random.Random, kill_fraction: float):
        self.conf = conf
        self.plan = plan
        self.rng = rng
        self.kill_fraction = kill_fraction
        self.lock = threading.Lock()
        self.deletable: list[str] = []  # acknowledged creations no deletion was started for
        self.durations: list[float] = []  # of the last runs that were not killed

    def next(self, index: int) -> Run:
        with self.lock:
            run = self._plan_run(index)
            if self.rng.random() < self.kill_fraction:
                # Anywhere from start-up to a little past a typical run's end (how
                # long a run takes depends on the machine's load): most kills land
                # while the run loads, checks or writes the file.
                typical = statistics.median(self.durations) if self.durations else 0.3
                run.kill_after = self.rng.uniform(0.1, 1.2) * typical
            return run

    def _plan_run(self, index: int) -> Run:
        conf = ["--conf", str(self.conf)]
        may_exist = BASE_GROUPS + len(self.plan.created) - sum(
            1 for r in self.plan.deleting.values() if r.acknowledged)
        kind = self.rng.choice(("create", "set", "addmember", "delete"))
        if kind == "create" and may_exist >= MAX_GROUPS:
            kind = "delete"
        if kind == "delete" and not self.deletable:
            kind = "set"
        if kind == "create":
            label = f"c{index:04d}"
            _, m1, m2 = group_serials(label)
            run = Run(index, kind, ["hagroup", "creategroup", "-l", label, "-se", f"{m1},{m2}",
                                    "--no-transport-key", *conf], label)
            self.plan.created[label] = run
        elif kind == "delete":
            label = self.deletable.pop(self.rng.randrange(len(self.deletable)))
            run = Run(index, kind, ["hagroup", "deletegroup", "-l", label, *conf], label)
            self.plan.deleting[label] = run
        elif kind == "addmember":
            serial = str(8_000_000 + index)
            group = f"base{self.rng.randrange(BASE_GROUPS)}"
            run = Run(index, kind, ["hagroup", "addmember", "-g", group, "-se", serial,
                                    "--no-transport-key", *conf], serial)
            self.plan.added[serial] = run
        else:
            key = f"k{index:04d}"
            run = Run(index, kind, ["conf", "set", *conf, SOAK_SECTION, key, f"v{index:04d}"],
                      key)
            self.plan.sets[key] = run
        return run

    def finished(self, run: Run) -> None:
        with self.lock:
            if run.kind == "create" and run.acknowledged:
                self.deletable.append(run.target)
            if not run.killed:
                self.durations = [*self.durations[-31:], run.seconds]


def execute(run: Run, conf: Path, env: dict[str, str]) -> None:
    """Start the run, SIGKILL it after ``kill_after`` if it is still going, reap it."""
    start = time.monotonic()
    proc = subprocess.Popen([HACLI, *run.args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            text=True)
    try:
        if run.kill_after is not None:
            try:
                proc.wait(timeout=run.kill_after)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL
                proc.wait()
                # the next writer removes it: seen or not is a race, so a lower bound
                run.left_temporary = any(f"-{proc.pid}-" in name for name in temporaries(conf))
        _, run.stderr = proc.communicate(timeout=RUN_TIMEOUT)
        run.seconds = time.monotonic() - start
    except subprocess.TimeoutExpired:
        proc.kill()
        _, run.stderr = proc.communicate()
        run.stderr += f"\n(no answer in {RUN_TIMEOUT:g} s: killed)"
        run.code = int(ExitStatus.FAILED)
        return
    run.code = proc.returncode


def file_problem(path: Path) -> str | None:
    """Why the file does not parse or validate now (None: it does)."""
    try:
        load_config(store.load(path), str(path))
    except ConfError as e:
        return str(e)
    return None


def verify(doc: Document, plan: Plan, runs: list[Run]) -> list[str]:
    """Every acknowledged change present, nothing else changed: the list of problems."""
    problems: list[str] = []
    config = load_config(doc)
    groups = {g.label: g for g in config.groups}
    for label, members in plan.base_members.items():
        g = groups.get(label)
        if g is None:
            problems.append(f"base group {label} is gone")
            continue
        extra = [m for m in g.members if m not in members]
        for serial, run in plan.added.items():
            if run.acknowledged and serial not in g.members and _added_to(run) == label:
                problems.append(f"acknowledged addmember {serial} missing from {label}")
        for serial in extra:
            run_of = plan.added.get(serial)
            if run_of is None or _added_to(run_of) != label:
                problems.append(f"{label} has member {serial} that no run added to it")
    for label, run in plan.created.items():
        deletion = plan.deleting.get(label)
        g = groups.get(label)
        if deletion is not None and deletion.acknowledged:
            if g is not None:
                problems.append(f"acknowledged deletion of {label} did not happen")
            continue
        if g is None:
            if run.acknowledged and deletion is None:
                problems.append(f"acknowledged creation of {label} is missing")
            continue
        serial, m1, m2 = group_serials(label)
        if (g.serial, g.members) != (serial, (m1, m2)):
            problems.append(f"{label} has serial {g.serial} and members {g.members}, "
                            f"not {serial} and {(m1, m2)}")
    for label in groups:
        if label not in plan.base_members and label not in plan.created:
            problems.append(f"group {label} was never asked for")
    for key, run in plan.sets.items():
        value = doc.get(SOAK_SECTION, key)
        if run.acknowledged and value is None:
            problems.append(f"acknowledged conf set {SOAK_SECTION}/{key} is missing")
        elif value is not None and value != f"v{run.index:04d}":
            problems.append(f"{SOAK_SECTION}/{key} is {value!r}, not v{run.index:04d}")
    for key in doc.keys(SOAK_SECTION):
        if key not in plan.sets:
            problems.append(f"{SOAK_SECTION}/{key} was never asked for")
    for section, items in plan.untouched.items():
        if doc.items(section) != items:
            problems.append(f"section {section!r}, which no run touches, changed")
    for run in runs:
        if not run.killed and not run.acknowledged:
            last = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
            problems.append(f"run {run.index} ({' '.join(run.args[:2])}) was not killed "
                            f"but exited {run.code}: {last}")
    return problems


def killed_landed(doc: Document, plan: Plan) -> int:
    """How many killed runs had made their change before the kill (the others
    died before their write): a soak whose kills all land on one side of the
    write proves less."""
    groups = {g.label: g for g in load_config(doc).groups}
    members = {m for g in groups.values() for m in g.members}
    landed = [label in groups for label, r in plan.created.items()
              if r.killed and label not in plan.deleting]
    landed += [doc.get(SOAK_SECTION, key) is not None for key, r in plan.sets.items() if r.killed]
    landed += [serial in members for serial, r in plan.added.items() if r.killed]
    landed += [label not in groups for label, r in plan.deleting.items() if r.killed]
    return sum(landed)


def _added_to(run: Run) -> str:
    return run.args[run.args.index("-g") + 1]


def temporaries(path: Path) -> list[str]:
    """Temporary files a writer left beside ``path``."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


@dataclass
class Report:
    """The soak's outcome (``--json`` prints it)."""

    runs: int
    concurrency: int
    seed: int
    seconds: float
    acknowledged: int
    killed: int
    killed_after_write: int
    killed_while_writing: int
    by_kind: dict[str, int]
    checks_between_runs: int
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems


def soak(workdir: Path, runs: int, concurrency: int, kill_fraction: float, seed: int,
         progress: Callable[[int], None] | None = None) -> Report:
    """Run the soak in ``workdir`` (it must exist and be empty) and check the file."""
    conf = workdir / "Chrystoki.conf"
    plan = prepare(conf)
    scheduler = Scheduler(conf, plan, random.Random(seed), kill_fraction)
    env = dict(os.environ)
    done: list[Run] = []
    problems: list[str] = []
    checks = 0
    done_lock = threading.Lock()

    def one(index: int) -> None:
        nonlocal checks
        run = scheduler.next(index)
        execute(run, conf, env)
        scheduler.finished(run)
        problem = file_problem(conf)
        with done_lock:
            done.append(run)
            checks += 1
            if problem is not None:
                problems.append(f"after run {run.index} ({run.kind}, code {run.code}) "
                                f"the file is broken: {problem}")
            if progress is not None:
                progress(len(done))

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(one, i) for i in range(runs)]:
            future.result()
    seconds = time.monotonic() - start
    landed = 0
    try:
        doc = store.load(conf)
        problems += verify(doc, plan, done)
        landed = killed_landed(doc, plan)
    except ConfError as e:
        problems.append(f"the final file is broken: {e}")
    # One last ordinary write clears what killed writers left behind.
    final = subprocess.run([HACLI, "conf", "set", "--conf", str(conf), SOAK_SECTION, "final",
                            "1"], capture_output=True, text=True, env=env, check=False)
    if final.returncode != ExitStatus.OK:
        problems.append(f"the final write failed: {final.stderr.strip()}")
    if temporaries(conf):
        problems.append(f"temporary files left: {', '.join(temporaries(conf))}")
    kinds: dict[str, int] = {}
    for run in done:
        kinds[run.kind] = kinds.get(run.kind, 0) + 1
    return Report(runs, concurrency, seed, round(seconds, 1),
                  sum(r.acknowledged for r in done), sum(r.killed for r in done), landed,
                  sum(r.left_temporary for r in done), kinds,
                  checks, problems)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000, help="hacli runs in all (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="runs at a time (default 16)")
    p.add_argument("--kill-fraction", type=float, default=0.15,
                   help="share of runs that get SIGKILL (default 0.15)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    workdir = Path(tempfile.mkdtemp(prefix="hacli-confsoak-"))
    try:
        report = soak(workdir, args.runs, args.concurrency, args.kill_fraction, seed)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({**report.__dict__, "passed": report.passed}, indent=2))
    else:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(report.by_kind.items()))
        print(f"confsoak: {report.runs} runs ({kinds}), {report.concurrency} at a time, "
              f"seed {report.seed}, {report.seconds} s")
        print(f"  acknowledged {report.acknowledged}, killed {report.killed} "
              f"({report.killed_after_write} after their change was in place, at least "
              f"{report.killed_while_writing} in the middle of writing it), "
              f"file checked {report.checks_between_runs} times between runs")
        for problem in report.problems:
            print(f"  PROBLEM: {problem}")
        print("  passed" if report.passed else f"  FAILED ({len(report.problems)} problems)")
        if args.keep:
            print(f"  files kept in {workdir}")
    return int(ExitStatus.OK if report.passed else ExitStatus.FAILED)


if __name__ == "__main__":
    sys.exit(main())
