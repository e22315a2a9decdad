"""The multi-part replay journal's bookkeeping, without a token.

The lab tests (test_engine_mpfail.py) replay on members running the same
module, whose outputs come in the same sizes; these cases cover a member that
takes over and buffers differently, and one that produces other bytes.
"""

from __future__ import annotations

import pytest

from hacli.engine.replay import ReplayJournal, ReplayMismatch


def test_bound_drops_the_journal() -> None:
    j = ReplayJournal(limit=8, keeps_output=True)
    assert j.add(b"1234", b"ab") == b"ab" and j.replayable
    assert j.add(b"5678", b"") == b"" and j.replayable  # at the bound
    assert j.add(b"9", b"cd") == b"cd"
    assert not j.replayable and j.chunks is None and j.outputs is None
    assert "1234" not in repr(j)  # never the data
    assert not ReplayJournal(limit=0, keeps_output=False).replayable  # 0: no journal


def test_sign_journal_keeps_inputs_only() -> None:
    j = ReplayJournal(limit=100, keeps_output=False)
    j.add(b"a", b"")
    j.add(b"b", b"")
    assert j.chunks == [b"a", b"b"] and j.outputs is None
    j.replayed(b"")
    assert not j.pending and j.finished(b"") == b""


def test_replay_produced_more_than_was_returned_is_carried() -> None:
    j = ReplayJournal(limit=100, keeps_output=True)
    j.add(b"x" * 20, b"A" * 16)
    j.replayed(b"A" * 16 + b"B" * 16)  # the new member held nothing back
    assert j.add(b"y", b"C" * 16) == b"B" * 16 + b"C" * 16
    assert not j.pending
    assert b"".join(j.outputs or []) == b"A" * 16 + b"B" * 16 + b"C" * 16


def test_bytes_already_returned_are_dropped_from_the_new_output() -> None:
    j = ReplayJournal(limit=100, keeps_output=True)
    j.add(b"x" * 32, b"A" * 16 + b"B" * 16)
    j.replayed(b"A" * 16)  # the new member holds a block back
    assert j.add(b"y", b"B" * 8) == b""  # part of what the caller already has
    assert j.finished(b"B" * 8 + b"C" * 4) == b"C" * 4


@pytest.mark.parametrize("step", ["replayed", "add", "finished"])
def test_other_bytes_are_a_mismatch(step: str) -> None:
    j = ReplayJournal(limit=100, keeps_output=True)
    j.add(b"x" * 32, b"A" * 32)
    if step == "replayed":
        with pytest.raises(ReplayMismatch):
            j.replayed(b"A" * 15 + b"Z")
        return
    j.replayed(b"A" * 16)
    with pytest.raises(ReplayMismatch):
        if step == "add":
            j.add(b"y", b"Z" * 16)
        else:
            j.finished(b"A" * 8)  # ends short of what the caller already has
