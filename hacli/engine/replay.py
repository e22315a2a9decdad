"""The replay journal of a multi-part operation: what it takes to move it.

PKCS#11 offers no portable way to move a running operation to another token
(``C_GetOperationState`` is optional, vendor-specific, and no two members'
states need agree).  What every member can do is run the operation again:
the same ``C_xInit`` (mechanism, parameter, key), then the same updates.  So
an operation keeps, beside the member that runs it, a :class:`ReplayJournal`
of its inputs; when that member fails the operations layer begins the
operation again on another member and feeds it the journal
(:meth:`hacli.engine.operations.Operations.step`).

The journal is bounded (``MultipartJournalBytes``, 1 MiB by default): past the
bound its chunks are dropped at once (the memory is the point of the bound),
and a later failure of the member ends the operation with
``CKR_DEVICE_ERROR``, as it did before the journal existed.

Encrypt and decrypt return output along the way, which the application has
already consumed: the replay must not return it twice, nor different bytes.
The journal also keeps the output it returned; a replay from the start on a
deterministic cipher (ECB, CBC with the same IV) produces the same stream,
which is checked where both are known and otherwise reconciled by position:
bytes the replay produced beyond what was returned are handed out with the
next step's output (*carry*), bytes already returned that the new member has
not produced yet are compared and dropped from its next outputs (*expect*).
A mismatch (the members hold different keys, or the mechanism is not
deterministic) is :class:`ReplayMismatch`: the operation cannot continue.

The hot path, an update with no failure, costs a length sum, one list append
(two for encrypt/decrypt) and one attribute test.
"""

from __future__ import annotations


class ReplayMismatch(Exception):
    """The replayed output differs from what the application already received."""


class ReplayJournal:
    """The inputs fed to one multi-part operation (and, for encrypt/decrypt,
    the output returned), up to ``limit`` input bytes."""

    __slots__ = ("carry", "chunks", "expect", "limit", "outputs", "pending", "size")

    def __init__(self, limit: int, keeps_output: bool):
        self.limit = limit
        #: input chunks in order; None once the bound was passed (no replay)
        self.chunks: list[bytes] | None = [] if limit > 0 else None
        #: output returned to the caller (encrypt/decrypt), else None
        self.outputs: list[bytes] | None = [] if keeps_output and limit > 0 else None
        self.size = 0
        #: after a replay: bytes to prepend to the next output / to drop from it
        self.carry = b""
        self.expect = b""
        self.pending = False

    def __repr__(self) -> str:  # never the data
        state = "over" if self.chunks is None else f"{len(self.chunks)} chunks"
        return f"<ReplayJournal {self.size}/{self.limit} bytes, {state}>"

    @property
    def replayable(self) -> bool:
        """True while the operation can be replayed on another member."""
        return self.chunks is not None

    def add(self, chunk: bytes, out: bytes) -> bytes:
        """Record an update that succeeded on the member; returns the output
        the caller gets (``out`` reconciled after a replay)."""
        if self.pending:
            out = self.deliver(out)
        chunks = self.chunks
        if chunks is not None:
            self.size += len(chunk)
            if self.size > self.limit:
                self.chunks = self.outputs = None  # past the bound: free it now
            else:
                chunks.append(chunk)
                if self.outputs is not None and out:
                    self.outputs.append(out)
        return out

    def deliver(self, out: bytes) -> bytes:
        """The caller's share of ``out``, a step's output on the member that
        took over: carried bytes first, bytes already returned dropped."""
        if self.carry:
            out, self.carry = self.carry + out, b""
        elif self.expect:
            n = min(len(self.expect), len(out))
            if out[:n] != self.expect[:n]:
                raise ReplayMismatch()
            out, self.expect = out[n:], self.expect[n:]
        self.pending = bool(self.carry or self.expect)
        return out

    def finished(self, out: bytes) -> bytes:
        """The final step's output for the caller; every byte already returned
        must have been produced again by then."""
        if self.pending:
            out = self.deliver(out)
            if self.expect:
                raise ReplayMismatch()
        return out

    def replayed(self, out: bytes) -> None:
        """The journal was fed to a new member, which produced ``out``: check
        it against what the caller received and reconcile the rest."""
        returned = b"".join(self.outputs) if self.outputs is not None else b""
        n = min(len(out), len(returned))
        if out[:n] != returned[:n]:
            raise ReplayMismatch()
        self.carry, self.expect = out[len(returned):], returned[len(out):]
        self.pending = bool(self.carry or self.expect)


__all__ = ["ReplayJournal", "ReplayMismatch"]
