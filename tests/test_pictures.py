"""bench/pictures.py's figures, without a lab or matplotlib: the timeline's phase
table and the JSON that ``--redraw`` draws from."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
pictures = importlib.import_module("pictures")


def _timeline() -> object:
    tl = pictures.Timeline(10.0)
    tl.calls = [(0.5, 1.0, True), (2.9, 2.5, True), (3.1, 40.0, True), (3.2, 1.0, False),
                (6.9, 3000.0, True), (9.0, 1.2, True)]
    tl.events = [(3.0, "crash m0"), (6.0, "freeze m1"), (8.0, "restore both")]
    tl.in_service = [(0.0, 3), (3.05, 2), (9.5, 3)]
    return tl


def test_timeline_rows_split_calls_by_the_phase_they_started_in() -> None:
    assert pictures.timeline_rows(_timeline()) == [
        ["steady (0.0–3.0 s)", 2, 0, "2.5"],
        ["crash m0 (3.0–6.0 s)", 2, 1, "40.0"],
        ["freeze m1 (6.0–8.0 s)", 1, 0, "3,000.0"],
        ["restore both (8.0–10.0 s)", 1, 0, "1.2"],
    ]


def test_figures_saved_as_json_redraw_the_same(tmp_path: Path) -> None:
    figures = {"rsasign": [900.0, 1700.0, 2400.0], "random": [20000.0, 30000.0, 35000.0]}
    tl = _timeline()
    path = tmp_path / "figures.json"
    pictures.save(path, 4, 2, figures, 0.25, tl)
    assert pictures.restore(path) == (4, 2, figures, 0.25, tl)
