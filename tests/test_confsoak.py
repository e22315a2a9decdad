"""The configuration soak (``bench/confsoak.py``) in its 60-run version, and its checker.

``test_confsoak_60_runs`` starts 60 real ``hacli hagroup``/``hacli conf set``
processes, 16 at a time, against one Chrystoki.conf and SIGKILLs about a
fifth of them mid-run; the file must parse after every run and hold every
acknowledged change.  The checker tests show that a lost or foreign change
is noticed, so a passing soak means something.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from hacli.conf import haedit, store
from hacli.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
confsoak = importlib.import_module("confsoak")


def test_confsoak_60_runs(tmp_path: Path) -> None:
    report = confsoak.soak(tmp_path, runs=60, concurrency=16, kill_fraction=0.2, seed=12)
    assert report.problems == []
    assert report.checks_between_runs == 60
    assert set(report.by_kind) == {"create", "set", "addmember", "delete"}, report.by_kind
    assert report.killed > 0 and report.acknowledged > 30, report


def _run(index: int, kind: str, args: list[str], target: str, code: int) -> object:
    return confsoak.Run(index, kind, args, target, code=code)


def test_checker_notices_lost_and_foreign_changes(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    plan = confsoak.prepare(conf)
    ok, killed = int(ExitStatus.OK), -9
    runs = [
        _run(1, "create", ["hagroup", "creategroup"], "c0001", ok),     # applied
        _run(2, "create", ["hagroup", "creategroup"], "c0002", ok),     # lost
        _run(3, "set", ["conf", "set"], "k0003", ok),                   # lost
        _run(4, "addmember", ["hagroup", "addmember", "-g", "base0"], "8000004", ok),  # lost
        _run(5, "delete", ["hagroup", "deletegroup"], "c0001", ok),     # did not happen
        _run(6, "set", ["conf", "set"], "k0006", killed),               # killed: may be absent
        _run(7, "set", ["conf", "set"], "k0007", int(ExitStatus.FAILED)),  # failed unkilled
    ]
    plan.created = {"c0001": runs[0], "c0002": runs[1]}
    plan.sets = {"k0003": runs[2], "k0006": runs[5], "k0007": runs[6]}
    plan.added = {"8000004": runs[3]}
    plan.deleting = {"c0001": runs[4]}
    with store.edit(conf) as doc:
        _, m1, m2 = confsoak.group_serials("c0001")
        haedit.create_group(doc, "c0001", [m1, m2])
        haedit.create_group(doc, "intruder", ["9999999"])
        doc.set(confsoak.SOAK_SECTION, "k9999", "v9999")
    problems = confsoak.verify(store.load(conf), plan, runs)
    assert sorted(problems) == sorted([
        "acknowledged deletion of c0001 did not happen",
        "acknowledged creation of c0002 is missing",
        "acknowledged conf set Soak/k0003 is missing",
        "acknowledged addmember 8000004 missing from base0",
        "group intruder was never asked for",
        "Soak/k9999 was never asked for",
        "run 7 (conf set) was not killed but exited 1: (no message)",
    ])


def test_checker_notices_a_wrong_value_and_a_changed_section(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    plan = confsoak.prepare(conf)
    run = confsoak.Run(3, "set", ["conf", "set"], "k0003", code=-9)
    plan.sets = {"k0003": run}
    with store.edit(conf) as doc:
        doc.set(confsoak.SOAK_SECTION, "k0003", "v0004")  # another run's value
        doc.set("Misc", "ToolsDir", "/elsewhere")
    assert sorted(confsoak.verify(store.load(conf), plan, [run])) == [
        "Soak/k0003 is 'v0004', not v0003",
        "section 'Misc', which no run touches, changed",
    ]


def test_file_problem_reports_a_broken_file(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    confsoak.prepare(conf)
    assert confsoak.file_problem(conf) is None
    conf.write_text(conf.read_text() + "Soak = {\n")
    assert "never closed" in (confsoak.file_problem(conf) or "")
