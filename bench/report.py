"""Markdown helpers shared by the benchmarks (``startup.py``, ``ha_bench.py``)."""

from __future__ import annotations

from collections.abc import Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A Markdown table; *align* has one letter per column, ``l`` or ``r``
    (default: the first column left, the others right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [headers, rule, *[[str(c) for c in row] for row in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def num(value: float | None, digits: int = 0) -> str:
    """A figure with thousands separators, or an en dash for none."""
    return "–" if value is None else f"{value:,.{digits}f}"
