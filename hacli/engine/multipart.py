"""Multi-part operations (``C_xInit`` / ``C_xUpdate`` / ``C_xFinal``) on a member.

python-pkcs11 does multi-part operations only inside *one* call that consumes
an iterable of chunks: ``key.sign(chunks)`` runs ``C_SignInit``, one
``C_SignUpdate`` per chunk and ``C_SignFinal`` before it returns.  The engine
must instead run each step as its own call, on the member's worker thread
(SoftHSM2 runs without locks; every call into a module instance is serialised
on that thread), and must not keep the worker waiting while the application
prepares its next chunk.

:class:`StepDriver` solves this with a *helper thread per operation* used as
a coroutine:

* the helper thread runs the python-pkcs11 call (``key.sign(feeder)``) with a
  *feeder* iterator; whenever python-pkcs11 asks the feeder for the next chunk
  the helper parks on a condition variable;
* each application step is a task on the member's worker (``Member.run``,
  bounded by the command timeout) that hands one command to the helper (a
  chunk, *end*, or *abort*) and waits until the helper has parked again (the
  ``C_xUpdate`` is done) or finished (``C_xFinal`` is done);
* so PKCS#11 calls do run on the helper thread, but only while the worker is
  blocked waiting for it: exactly one thread is ever inside the module, which
  is all the serialisation needs, and between steps neither the worker nor
  the module is held.

Every operation gets a dedicated real session from a small per-connection
pool (the shared *work* session cannot host an operation that spans calls:
PKCS#11 allows one active operation of a kind per session, and
python-pkcs11's per-session operation lock would be held by the helper).

Ending early (session closed, member failed) sends *abort*: the feeder raises
inside python-pkcs11, whose context manager then ends the operation on the
member (``C_xFinal``, results ignored).

Every helper is *adopted* by the module instance whose worker started it
(:meth:`~hacli.engine.module.ModuleInstance.adopt`).  The instance ends the
helpers still in an operation, one at a time on its worker, before it
re-initialises or finalizes the module.  When the instance was abandoned
after a timeout (frozen member) the operations layer sends nothing; the
instance cuts its transport, so the stuck call returns, and its worker then
aborts the parked helpers (their ``C_xFinal`` fails at once on the dead
connection) before it exits: no helper outlives its instance, and none calls
into a module after it is finalized (modules are never unloaded).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.engine.module import current_instance
from hacli.engine.replay import ReplayJournal

if TYPE_CHECKING:
    from hacli.engine.member import Connection, Member
    from hacli.engine.module import ModuleInstance
    from hacli.engine.objects import VObject

#: The multi-part operation kinds of a session.
KINDS = ("sign", "verify", "encrypt", "decrypt", "digest")

#: PKCS#11 function names per kind: (init, update, final).
FUNCTIONS = {
    "sign": ("C_SignInit", "C_SignUpdate", "C_SignFinal"),
    "verify": ("C_VerifyInit", "C_VerifyUpdate", "C_VerifyFinal"),
    "encrypt": ("C_EncryptInit", "C_EncryptUpdate", "C_EncryptFinal"),
    "decrypt": ("C_DecryptInit", "C_DecryptUpdate", "C_DecryptFinal"),
    "digest": ("C_DigestInit", "C_DigestUpdate", "C_DigestFinal"),
}

#: Idle operation sessions kept per member connection.
POOL_SIZE = 4


class _Abort(Exception):
    """Raised by the feeder inside python-pkcs11 to end an operation early."""


Body = Callable[[Iterator[bytes], Callable[[bytes], None]], Any]


class StepDriver:
    """Run one python-pkcs11 multi-part call on a helper thread, one step at a time.

    ``body(feeder, emit)`` is the python-pkcs11 call; it iterates ``feeder``
    and may ``emit`` output produced along the way (encrypt/decrypt).  The
    methods :meth:`start`, :meth:`feed`, :meth:`finish` and :meth:`abort` are
    called on the member's worker thread; each returns once the helper has
    parked for its next chunk or finished.  Data chunks are held only until
    the helper takes them.  Started on a module instance's worker, the driver
    is adopted by that instance (see the module docstring).
    """

    def __init__(self, body: Body, name: str = "hacli-op"):
        self._body = body
        self._cond = threading.Condition()
        self._inbox: tuple[str, bytes] | None = None
        self._parked = False
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._out: list[bytes] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __repr__(self) -> str:
        state = "done" if self._done else "parked" if self._parked else "running"
        return f"<StepDriver {self._thread.name} {state}>"

    @property
    def done(self) -> bool:
        return self._done

    @property
    def thread(self) -> threading.Thread:
        """The helper thread."""
        return self._thread

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the helper thread to end; True if it has (or never started)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- helper thread -------------------------------------------------------
    def _run(self) -> None:
        try:
            result = self._body(self._feeder(), self._emit)
        except BaseException as e:  # handed to the worker; nothing escapes
            with self._cond:
                self._error = e
        else:
            with self._cond:
                self._result = result
        finally:
            with self._cond:
                self._done = True
                self._parked = False
                self._cond.notify_all()

    def _emit(self, data: bytes) -> None:
        with self._cond:
            self._out.append(bytes(data))

    def _feeder(self) -> Iterator[bytes]:
        while True:
            with self._cond:
                self._parked = True
                self._cond.notify_all()
                while self._inbox is None:
                    self._cond.wait()
                (kind, chunk), self._inbox = self._inbox, None
                self._parked = False
            if kind == "data":
                yield chunk
            elif kind == "end":
                return
            else:
                raise _Abort()

    # -- worker side ---------------------------------------------------------
    def _wait(self, deadline: float | None = None) -> bool:
        # called with self._cond held; False when the deadline passed first
        while not self._done and (self._inbox is not None or not self._parked):
            if deadline is None:
                self._cond.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._cond.wait(left)
        return True

    def _take_output(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _raise_if_failed(self) -> None:
        if self._done and self._error is not None:
            err, self._error = self._error, None
            raise err

    def start(self, owner: ModuleInstance | None = None) -> list[bytes]:
        """Begin: runs ``C_xInit`` (and nothing else).  Raises its error.

        ``owner`` (default: the instance whose worker runs this) adopts the
        helper: it ends it before it re-initialises or finalizes the module.
        """
        inst = owner if owner is not None else current_instance()
        if inst is not None:
            inst.adopt(self)
        self._thread.start()
        with self._cond:
            self._wait()
            self._raise_if_failed()
            if self._done:  # the body ended without asking for data: a bug
                raise RuntimeError("multi-part operation ended at init")
            return self._take_output()

    def _send(self, kind: str, chunk: bytes = b"", timeout: float | None = None) -> list[bytes]:
        with self._cond:
            if self._done:
                self._raise_if_failed()
                raise OperationEnded("multi-part operation already ended")
            self._inbox = (kind, chunk)
            self._cond.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._wait(deadline):
                raise TimeoutError(f"multi-part helper {self._thread.name} still busy")
            self._raise_if_failed()
            return self._take_output()

    def feed(self, chunk: bytes) -> list[bytes]:
        """One ``C_xUpdate``; returns the output it produced (encrypt/decrypt)."""
        return self._send("data", chunk)

    def finish(self) -> tuple[Any, list[bytes]]:
        """``C_xFinal``: returns (the body's result, output produced by the final)."""
        out = self._send("end")
        with self._cond:
            return self._result, out

    def abort(self, timeout: float | None = None) -> None:
        """End the operation early (python-pkcs11 ends it on the member).

        Never raises: the member may be gone, which is why we abort.  With a
        ``timeout``, returns after that many seconds even if the helper is
        still inside its ``C_xFinal``.  A driver never started just ends.
        """
        if self._thread.ident is None:
            with self._cond:
                self._done = True
                self._cond.notify_all()
            return
        try:
            self._send("abort", timeout=timeout)
        except BaseException:
            pass
        finally:
            with self._cond:
                self._error = None
                self._out = []


class OperationEnded(RuntimeError):
    """A step reached a helper whose operation had ended: aborted meanwhile,
    because its member was marked down by another call (see
    :meth:`hacli.engine.operations.Operations.member_failed`)."""


# ---------------------------------------------------------------------------
# the operation record and its bodies

@dataclass(eq=False)
class MultiPart:
    """One multi-part operation of a virtual session, on one member at a time.

    The *placement* (``member``, ``conn``, ``session``, ``driver``,
    ``sigbuf``) is where it runs now; a replay on another member replaces it
    (:meth:`move_to`).  The rest (the init's arguments, the journal) is the
    operation itself.
    """

    kind: str
    member: Member
    conn: Connection
    session: Any  # the dedicated python-pkcs11 session on the member
    driver: StepDriver | None = None
    #: the C_xInit arguments, to begin it again on another member
    vobj: VObject | None = None
    mechanism: Any = None
    param: Any = None
    #: the inputs fed so far (None: the operation cannot move, e.g. pinned)
    journal: ReplayJournal | None = None
    #: verify: the signature buffer handed to python-pkcs11 at init, filled at final
    sigbuf: bytearray | None = None
    #: verify without a known signature length: chunks kept, all steps run at final
    deferred: list[bytes] | None = None
    deferred_args: tuple[Any, ...] = ()
    key_handle: int | None = None
    #: CKR code once the member failed under the operation
    dead: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:
        return f"<MultiPart {self.kind} on {self.member.serial}>"

    def move_to(self, other: MultiPart) -> None:
        """Take ``other``'s placement (the same operation begun again on
        another member, its journal fed); members' lock held by the caller."""
        self.member, self.conn, self.session = other.member, other.conn, other.session
        self.driver, self.sigbuf, self.dead = other.driver, other.sigbuf, None


def take_session(conn: Connection) -> Any:
    """An idle operation session of ``conn``, or a new one (worker thread)."""
    from hacli.engine.member import MAPPER

    try:  # (calls on other lanes take and give back sessions at the same time)
        return conn.op_sessions.pop()
    except IndexError:
        return conn.token.open(rw=True, attribute_mapper=MAPPER)


def give_back(conn: Connection, session: Any) -> None:
    """Return an operation session whose operation ended cleanly (worker thread)."""
    if len(conn.op_sessions) < POOL_SIZE:
        conn.op_sessions.append(session)
    else:
        with contextlib.suppress(pkcs11.PKCS11Error):
            session.close()


def drop_session(session: Any) -> None:
    """Close an operation session after an abort or error (worker thread)."""
    with contextlib.suppress(pkcs11.PKCS11Error):
        session.close()


def key_on(session: Any, ident: dict[Any, Any], handle: int) -> Any:
    """The python-pkcs11 object for ``handle`` bound to ``session``.

    Object handles are the same in every session of one application; the
    object is found again by its identity so that python-pkcs11 binds it to
    the operation session.
    """
    for obj in session.get_objects(ident):
        if obj.handle == handle:
            return obj
    raise pkcs11.KeyHandleInvalid()


#: Why a step can fail with CKR_BUFFER_TOO_SMALL although python-pkcs11 sizes
#: every output buffer (see docs/engine.md, "Multi-part operations").
ZERO_OUTPUT_NOTE = ("the member's module cannot return an empty output for this step "
                    "(p11-kit's RPC before 0.25 takes a zero-length output buffer for a "
                    "length query); use single-part encrypt/decrypt with this member")


def _after_error(op: MultiPart, error: BaseException, step: int) -> None:
    # the error ended the operation on the member: the session is not reused
    if op.driver is not None and op.driver.done:
        drop_session(op.session)
    if isinstance(error, pkcs11.PKCS11Error) and "buffer was too small" in str(error).lower():
        raise CKRError(CKR.BUFFER_TOO_SMALL, FUNCTIONS[op.kind][step], op.member.serial,
                       detail=ZERO_OUTPUT_NOTE) from error


def feed_raw(op: MultiPart, chunk: bytes) -> bytes:
    """One update step of ``op`` (worker thread), not journaled: the output
    the member produced (a replay feeds the journal with it)."""
    assert op.driver is not None
    try:
        return b"".join(op.driver.feed(chunk))
    except BaseException as e:
        _after_error(op, e, 1)
        raise


def feed(op: MultiPart, chunk: bytes) -> bytes:
    """One update step of ``op`` (worker thread), journaled: the output the
    caller gets."""
    out = feed_raw(op, chunk)
    journal = op.journal
    return out if journal is None else journal.add(chunk, out)


def finish(op: MultiPart) -> tuple[Any, bytes]:
    """The final step of ``op`` (worker thread): (result, last output)."""
    assert op.driver is not None
    try:
        result, out = op.driver.finish()
    except BaseException as e:
        _after_error(op, e, 2)
        raise
    give_back(op.conn, op.session)
    last = b"".join(out)
    return result, last if op.journal is None else op.journal.finished(last)


def finish_verify(op: MultiPart, signature: bytes) -> bool:
    """``C_VerifyFinal`` with ``signature`` (worker thread).

    A signature of another length than the key's cannot be valid (the member
    would answer CKR_SIGNATURE_LEN_RANGE): the operation is ended, False.
    """
    assert op.driver is not None and op.sigbuf is not None
    if len(signature) != len(op.sigbuf):
        op.driver.abort()
        drop_session(op.session)
        return False
    op.sigbuf[:] = signature
    result, _ = finish(op)
    return bool(result)


_HMAC_LENGTHS = {
    Mechanism.SHA_1_HMAC: 20,
    Mechanism.SHA224_HMAC: 28,
    Mechanism.SHA256_HMAC: 32,
    Mechanism.SHA384_HMAC: 48,
    Mechanism.SHA512_HMAC: 64,
    Mechanism.AES_CMAC: 16,
}


def signature_length(key: Any, mechanism: Any) -> int | None:
    """Length of the signatures ``key`` verifies with ``mechanism``, when known.

    python-pkcs11 takes the signature when a multi-part verify starts (it is
    used only by ``C_VerifyFinal``), so the engine hands it a buffer of this
    length at ``verify_init`` and fills it at ``verify_final``.
    """
    try:
        cls = key[Attribute.CLASS]
        if cls == ObjectClass.SECRET_KEY:
            return _HMAC_LENGTHS.get(mechanism)
        key_type = key[Attribute.KEY_TYPE]
        if key_type == KeyType.RSA:
            return (int(key[Attribute.MODULUS_BITS]) + 7) // 8 if cls == ObjectClass.PUBLIC_KEY \
                else len(key[Attribute.MODULUS])
        if key_type == KeyType.EC and (mechanism is None or "ECDSA" in Mechanism(mechanism).name):
            from asn1crypto.keys import ECDomainParameters

            return 2 * int(ECDomainParameters.load(key[Attribute.EC_PARAMS]).key_size)
    except (pkcs11.PKCS11Error, KeyError, ValueError, TypeError):
        return None
    return None


def body_for(kind: str, target: Any, mechanism: Any, param: Any,
             sigbuf: bytearray | None = None) -> Body:
    """The python-pkcs11 call of one operation kind (runs on the helper thread)."""
    kw: dict[str, Any] = {}
    if mechanism is not None:
        kw["mechanism"] = mechanism
    if param is not None:
        kw["mechanism_param"] = param

    if kind == "sign":
        return lambda feed, emit: target.sign(feed, **kw)
    if kind == "verify":
        return lambda feed, emit: target.verify(feed, sigbuf, **kw)
    if kind == "digest":
        return lambda feed, emit: target.digest(feed, **kw)
    if kind == "encrypt":
        def enc(feed: Iterator[bytes], emit: Callable[[bytes], None]) -> None:
            for out in target.encrypt(feed, **kw):
                emit(out)
        return enc
    if kind == "decrypt":
        def dec(feed: Iterator[bytes], emit: Callable[[bytes], None]) -> None:
            for out in target.decrypt(feed, **kw):
                emit(out)
        return dec
    raise ValueError(f"unknown operation kind {kind!r}")


__all__ = ["FUNCTIONS", "KINDS", "MultiPart", "OperationEnded", "StepDriver", "body_for",
           "drop_session", "feed", "feed_raw", "finish", "give_back", "key_on", "signature_length",
           "take_session"]
