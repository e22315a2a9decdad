"""The moving parts of ``bench/soak.py``: records, the fixed keys, and its threads.

* :class:`Recorder` -- every call (operation, start, end, CKR name), wrong
  results, harness errors, and the fate of every token object made;
* :class:`Timeline` -- the lab's view of each member's outages, and which
  members were *in service* for a call (see ``bench/soak.py``);
* :func:`make_fixed` -- the keys and reference answers made before the run;
* :class:`Monitor` -- polls ``group.member_states()`` (no call into a member);
* :class:`Chaos` -- crashes and freezes members, restores them;
* :class:`Worker` -- one application thread with its own session and a checked mix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from soak_check import (
    Identity,
    aes_key_wrap,
    ec_point_from_der,
    ecdsa_p256_verify,
    rsa_pkcs1_sha256_verify,
)

from hacli.engine import CKRError, ckr_name
from hacli.errors import HacliError

#: A member must have been up this long before a call to be in service for it.
IN_SERVICE_MARGIN = 0.5
#: Recovery bound: back in service within AutoReconnectInterval + this.
RECOVERY_SLACK = 2.0
MONITOR_PERIOD = 0.02
#: A worker whose call failed waits this long before its next operation.
FAIL_PAUSE = 0.002
#: Seconds between faults, and how long a member stays crashed or frozen.
FAULT_EVERY = (2.0, 5.0)
FAULT_LENGTH = (1.5, 8.0)
#: At most this many generated token objects are kept (the rest are destroyed).
MAX_KEPT = 24
#: Share of ECDSA signatures also verified on the host (about 2 ms each).
EC_HOST_SAMPLE = 0.25
FIXED_DATA = b"hacli soak: fixed plaintext for the reference ciphertext" * 3
BLOCK = bytes(range(16))

CLS_SECRET, CLS_PUBLIC, CLS_PRIVATE = "Secret Key Object", "Public Key Object", "Private Key Object"


class CallFailed(Exception):
    """A recorded call failed (the failure is already in the record)."""


class Interrupted(Exception):
    """SIGTERM, turned into an exception so the lab is torn down."""


def now() -> float:
    return time.monotonic()


def error_name(exc: BaseException) -> str:
    """The CKR name of an engine or python-pkcs11 error; ``python:<Class>`` for anything else."""
    if isinstance(exc, CKRError) or type(exc).__module__.startswith("pkcs11"):
        return ckr_name(exc)
    return f"python:{type(exc).__name__}"


def is_alive(state: Any) -> bool:
    """A ``MemberState`` (or anything with that value) that means in service."""
    # a member that is synchronising after its recovery serves calls too
    return str(getattr(state, "value", state)).lower() in ("alive", "synchronising")


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run *fn* on a daemon thread; its result, its exception, or TimeoutError after *timeout*."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, name=f"soak-{what}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what} did not return within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# ---------------------------------------------------------------------------
# records


@dataclasses.dataclass
class Fault:
    serial: str
    label: str
    kind: str  # "fail" | "hang"
    t_fault: float
    restore_due: float
    t_restored: float | None = None
    error: str | None = None
    #: the lab could not restore the member: out for good, not the engine's fault
    lab_failed: bool = False

    def end(self) -> float:
        return float("inf") if self.t_restored is None else self.t_restored


class Timeline:
    """The lab's view: which member was out (faulted, not yet restored) when."""

    def __init__(self, serials: list[str]):
        self.serials = serials
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def snapshot(self) -> list[Fault]:
        with self._lock:
            return list(self.faults)

    def in_service(self, a: float, b: float, faults: list[Fault] | None = None) -> list[str]:
        """Members with no outage overlapping ``[a - margin, b]``."""
        faults = self.snapshot() if faults is None else faults
        out = []
        for s in self.serials:
            if all(f.end() <= a - IN_SERVICE_MARGIN or f.t_fault > b
                   for f in faults if f.serial == s):
                out.append(s)
        return out


class Recorder:
    """Every call, wrong result and token object the workers made (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, float, float, str | None]] = []
        self.wrong: list[tuple[str, float, str]] = []
        #: exceptions of the harness itself (a bug here, not in the engine)
        self.harness: list[str] = []
        self.messages: dict[str, list[str]] = defaultdict(list)
        self.kept: set[Identity] = set()
        #: destroyed token objects, with when the destroy returned
        self.destroyed: dict[Identity, float] = {}
        self.uncertain: set[Identity] = set()

    def call(self, op: str, t0: float, t1: float, error: BaseException | None) -> None:
        ckr = None if error is None else error_name(error)
        with self._lock:
            self.calls.append((op, t0, t1, ckr))
            seen = self.messages[ckr] if ckr is not None else []
            if ckr is not None and len(seen) < 4 and not any(m.startswith(op + ":") for m in seen):
                text = str(error).strip() or type(error).__name__
                seen.append(f"{op}: {text[:300]}")  # one sample per operation

    def bad(self, op: str, what: str) -> None:
        with self._lock:
            self.wrong.append((op, now(), what))

    def token_objects(self, ids: list[Identity], fate: str) -> None:
        with self._lock:
            for ident in ids:
                self.uncertain.discard(ident)
                if fate == "kept":
                    self.kept.add(ident)
                elif fate == "destroyed":
                    self.destroyed[ident] = now()
                else:
                    self.uncertain.add(ident)

    def kept_count(self) -> int:
        with self._lock:
            return len(self.kept)




@dataclasses.dataclass
class Fixed:
    rsa_pub: int
    rsa_priv: int
    rsa_n: int
    rsa_e: int
    ec_pub: int
    ec_priv: int
    ec_point: tuple[int, int]
    aes: int
    aes_mech: Any
    aes_ref: bytes  # ciphertext of FIXED_DATA (fixed IV) or BLOCK (ECB)
    wrap: tuple[int, bytes, bytes] | None  # (unwrapping key, blob, ECB(BLOCK) under the value)


def make_fixed(s: Any, rec: Recorder, notes: list[str]) -> Fixed:
    """The keys and reference answers the mix checks against (made with every member up)."""
    mechs = set(s.mechanisms())
    pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="soak-rsa", id=b"soak-rsa",
                                   token=True)
    attrs = s.get_attributes(pub, [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT])
    n = int.from_bytes(attrs[Attribute.MODULUS], "big")
    e = int.from_bytes(attrs[Attribute.PUBLIC_EXPONENT], "big")
    ecpub, ecpriv = s.generate_keypair(KeyType.EC, curve="secp256r1", label="soak-ec",
                                       id=b"soak-ec", token=True)
    point = ec_point_from_der(s.get_attribute(ecpub, Attribute.EC_POINT))
    rec.token_objects([(CLS_PUBLIC, "RSA", "soak-rsa", b"soak-rsa".hex()),
                            (CLS_PRIVATE, "RSA", "soak-rsa", b"soak-rsa".hex()),
                            (CLS_PUBLIC, "EC", "soak-ec", b"soak-ec".hex()),
                            (CLS_PRIVATE, "EC", "soak-ec", b"soak-ec".hex())], "kept")
    data = b"soak reference"
    if not rsa_pkcs1_sha256_verify(n, e, data, s.sign(priv, data,
                                                       mechanism=Mechanism.SHA256_RSA_PKCS)):
        raise HacliError("the reference RSA signature does not verify on the host")
    digest = hashlib.sha256(data).digest()
    if not ecdsa_p256_verify(point, digest, s.sign(ecpriv, digest, mechanism=Mechanism.ECDSA)):
        raise HacliError("the reference ECDSA signature does not verify on the host")

    aes = s.generate_key(KeyType.AES, 256, label="soak-aes-session", token=False)
    if Mechanism.AES_CBC_PAD in mechs:
        aes_mech = Mechanism.AES_CBC_PAD
        ref = s.encrypt(aes, FIXED_DATA, mechanism=aes_mech, mechanism_param=bytes(16))
        back = s.decrypt(aes, ref, mechanism=aes_mech, mechanism_param=bytes(16))
        if back != FIXED_DATA:
            raise HacliError("the reference AES-CBC-PAD round trip failed")
    else:
        aes_mech = Mechanism.AES_ECB
        notes.append("the slot offers no CKM_AES_CBC_PAD: AES-ECB on whole blocks")
        ref = s.encrypt(aes, BLOCK, mechanism=aes_mech)

    wrap = None
    if Mechanism.AES_KEY_WRAP in mechs:
        value = os.urandom(32)
        wkey = s.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: os.urandom(32), Attribute.TOKEN: False,
            Attribute.LABEL: "soak-unwrapper", Attribute.ENCRYPT: True,
            Attribute.UNWRAP: True})
        known = s.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
            Attribute.VALUE: value, Attribute.TOKEN: False, Attribute.LABEL: "soak-known",
            Attribute.ENCRYPT: True})
        blob = aes_key_wrap(lambda block: s.encrypt(wkey, block, mechanism=Mechanism.AES_ECB),
                            value)
        expect = s.encrypt(known, BLOCK, mechanism=Mechanism.AES_ECB)
        probe = s.unwrap_key(wkey, blob, ObjectClass.SECRET_KEY, KeyType.AES,
                             mechanism=Mechanism.AES_KEY_WRAP, label="soak-unwrapped")
        if s.encrypt(probe, BLOCK, mechanism=Mechanism.AES_ECB) != expect:
            raise HacliError("the unwrapped reference key does not match its value")
        s.destroy_object(probe)
        wrap = (wkey, blob, expect)
    else:
        notes.append("the slot offers no CKM_AES_KEY_WRAP: no unwrap in the mix")
    return Fixed(pub, priv, n, e, ecpub, ecpriv, point, aes, aes_mech, ref, wrap)


class Monitor(threading.Thread):
    """Polls ``group.member_states()`` (no call into a member) and keeps the transitions."""

    def __init__(self, group: Any, serials: list[str]):
        super().__init__(name="soak-monitor", daemon=True)
        self.group = group
        self.stop = threading.Event()
        self.transitions: dict[str, list[tuple[float, bool]]] = {s: [] for s in serials}
        self.group_down: list[tuple[float, float]] = []
        self._down_since: float | None = None
        self.errors: list[str] = []
        #: the longest a member_states() call took (it takes the group's lock)
        self.slowest_poll = 0.0

    def run(self) -> None:
        last: dict[str, bool] = {}
        while not self.stop.is_set():
            t = now()
            try:
                states = {s: is_alive(v) for s, v in self.group.member_states().items()}
                self.slowest_poll = max(self.slowest_poll, now() - t)
            except Exception as exc:
                if len(self.errors) < 3:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                states = {}
            for s, alive in states.items():
                if last.get(s) != alive:
                    self.transitions.setdefault(s, []).append((t, alive))
            if states and not any(states.values()):
                if self._down_since is None:
                    self._down_since = t
            elif self._down_since is not None:
                self.group_down.append((self._down_since, t))
                self._down_since = None
            last = states or last
            self.stop.wait(MONITOR_PERIOD)
        if self._down_since is not None:
            self.group_down.append((self._down_since, now()))

    def alive_since(self, serial: str) -> float | None:
        """Since when the monitor has seen *serial* in service without a break (None: down)."""
        trans = self.transitions.get(serial)
        if not trans or not trans[-1][1]:
            return None
        return trans[-1][0]

    def down_intervals(self) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list[tuple[float, float | None]]] = {}
        for s, trans in self.transitions.items():
            ivs: list[tuple[float, float | None]] = []
            start = None
            for t, alive in trans:
                if not alive and start is None:
                    start = t
                elif alive and start is not None:
                    ivs.append((start, t))
                    start = None
            if start is not None:
                ivs.append((start, None))
            out[s] = ivs
        return out

    def group_down_intervals(self) -> list[tuple[float, float]]:
        return list(self.group_down)


class Chaos(threading.Thread):
    """Crashes (``lab.fail``) or freezes (``lab.hang``) a member every 2-5 s, restores it later.

    *soak* is the run (``bench/soak.py``'s ``Soak``): its lab, group, members,
    timeline, interval, start and ``chaos_end``.

    The victim is a member that is up (restored at least 1 s ago, or never
    faulted) and that the engine has shown in service for 0.5 s (the
    monitor's record), so the recovery of its previous fault is over, and
    recorded, before the next one.  A fault is only injected
    when another member stays *established*: up for ``interval + 2`` s, long
    enough that the engine must have it in service.
    """

    def __init__(self, soak: Any):
        super().__init__(name="soak-chaos", daemon=True)
        self.soak = soak
        self.rng = random.Random(soak.rng.random())
        self.active: dict[str, Fault] = {}
        self.up_since = dict.fromkeys(soak.members, float("-inf"))

    def run(self) -> None:
        s = self.soak
        next_fault = s.t_start + self.rng.uniform(1.0, 2.0)
        try:
            while not s.stop.is_set() and now() < s.chaos_end:
                t = now()
                for f in [f for f in self.active.values() if f.restore_due <= t]:
                    self.restore(f)
                if t >= next_fault:
                    self.inject(t)
                    next_fault = now() + self.rng.uniform(*FAULT_EVERY)
                s.stop.wait(0.02)
        finally:
            for f in list(self.active.values()):
                self.restore(f)

    def established(self, t: float) -> list[str]:
        need = self.soak.interval + RECOVERY_SLACK
        return [m for m in self.soak.members
                if m not in self.active and t - self.up_since[m] >= need]

    def candidates(self, t: float) -> list[str]:
        out = []
        for m in self.soak.members:
            since = self.soak.monitor.alive_since(m)
            if (m not in self.active and t - self.up_since[m] >= 1.0
                    and since is not None and t - since >= 0.5):
                out.append(m)
        return out

    def inject(self, t: float) -> None:
        s = self.soak
        if s.chaos_end - t < FAULT_LENGTH[0]:
            return
        established = self.established(t)
        victims = [m for m in self.candidates(t) if set(established) - {m}]
        if not victims:
            return  # faulting one would leave no established member
        victim = self.rng.choice(victims)
        kind = self.rng.choice(["fail", "hang"])
        fault = Fault(victim, s.members[victim], kind, now(),
                      min(t + self.rng.uniform(*FAULT_LENGTH), s.chaos_end))
        s.timeline.add(fault)  # out of service from just before the signal
        self.active[victim] = fault
        try:
            (s.lab.fail if kind == "fail" else s.lab.hang)(victim)
        except Exception as exc:
            fault.error = f"{kind}: {exc}"
            s.problems.append(f"lab: {kind} {fault.label}: {exc}")

    def restore(self, fault: Fault) -> None:
        """``lab.restore``, tried three times; a member the lab cannot bring back stays out
        of service for good (``Fault.lab_failed``) and is never held against the engine."""
        s = self.soak
        self.active.pop(fault.serial, None)
        for attempt in range(3):
            try:
                s.lab.restore(fault.serial)
            except Exception as exc:
                s.problems.append(f"lab: restore {fault.label} (attempt {attempt + 1}): {exc}")
                continue
            fault.t_restored = now()
            self.up_since[fault.serial] = fault.t_restored
            return
        fault.lab_failed = True
        self.up_since[fault.serial] = float("inf")  # never a victim or established again


class Worker(threading.Thread):
    """One application thread: its own session on the HA slot, a random checked mix."""

    def __init__(self, soak: Any, index: int, rng: random.Random):
        super().__init__(name=f"soak-worker-{index}", daemon=True)
        self.soak = soak
        self.index = index
        self.rng = rng
        self.count = 0
        fx = soak.fixed
        self.ops: list[tuple[Callable[[Any], None], float]] = [
            (self.rsa_sign, 3), (self.ec_sign, 2), (self.aes_round_trip, 3),
            (self.digest, 2), (self.random_bytes, 2), (self.session_key, 1), (self.token_key, 1),
            (self.token_keypair, 0.3), (self.mp_sign, 1)]
        if fx.wrap is not None:
            self.ops.append((self.unwrap, 1))
        if fx.aes_mech == Mechanism.AES_CBC_PAD:
            self.ops.append((self.mp_aes_cbc, 1))

    def call(self, op: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        t0 = now()
        try:
            result = fn(*args, **kw)
        except Exception as exc:
            self.soak.rec.call(op, t0, now(), exc)
            raise CallFailed from None
        self.soak.rec.call(op, t0, now(), None)
        return result

    def check(self, ok: bool, op: str, what: str) -> None:
        if not ok:
            self.soak.rec.bad(op, what)

    def run(self) -> None:
        s = self.soak
        session = None
        funcs = [f for f, _ in self.ops]
        weights = [w for _, w in self.ops]
        while not s.stop.is_set() and now() < s.deadline:
            if session is None:
                try:
                    session = self.call("C_OpenSession", s.group.open_session)
                except CallFailed:
                    s.stop.wait(0.05)
                continue
            op = self.rng.choices(funcs, weights)[0]
            try:
                op(session)
            except CallFailed:
                s.stop.wait(FAIL_PAUSE)  # a client backs off; no tight loop on a failing group
            except Exception as exc:  # the harness's own bug: a loud problem, not a loss
                s.rec.harness.append(f"{op.__name__}: {type(exc).__name__}: {exc}")
        if session is not None:
            with contextlib.suppress(CallFailed):
                self.call("C_CloseSession", session.close)

    # -- the mix ---------------------------------------------------------------
    def data(self, most: int = 4096) -> bytes:
        return os.urandom(self.rng.randint(1, most))

    def rsa_sign(self, s: Any) -> None:
        fx = self.soak.fixed
        mech = Mechanism.SHA256_RSA_PKCS
        data = self.data(2048)
        sig = self.call("C_Sign rsa", s.sign, fx.rsa_priv, data, mechanism=mech)
        self.check(rsa_pkcs1_sha256_verify(fx.rsa_n, fx.rsa_e, data, sig), "C_Sign",
                   "RSA signature does not verify on the host")
        if self.rng.random() < 0.2:
            ok = self.call("C_Verify rsa", s.verify, fx.rsa_pub, data, sig, mechanism=mech)
            self.check(ok is True, "C_Verify", "valid RSA signature rejected")
            bad = sig[:-1] + bytes([sig[-1] ^ 1])
            ok = self.call("C_Verify rsa", s.verify, fx.rsa_pub, data, bad, mechanism=mech)
            self.check(ok is False, "C_Verify", "tampered RSA signature accepted")

    def chunks(self, data: bytes, most: int = 8192) -> list[bytes]:
        """``data`` cut at random places (some chunks empty, most not)."""
        out, at = [], 0
        while at < len(data):
            n = self.rng.randint(0, most)
            out.append(data[at:at + n])
            at += n
        return out

    def mp_sign(self, s: Any) -> None:
        """Multi-part RSA sign (C_SignInit, updates, C_SignFinal) of up to 64 KiB,
        verified on the host: a member failing in the middle must not show
        (the operation is replayed on another member from its journal)."""
        fx = self.soak.fixed
        data = self.data(64 * 1024)
        self.call("C_SignInit mp", s.sign_init, fx.rsa_priv, mechanism=Mechanism.SHA256_RSA_PKCS)
        for chunk in self.chunks(data):
            self.call("C_SignUpdate mp", s.sign_update, chunk)
        sig = self.call("C_SignFinal mp", s.sign_final)
        self.check(rsa_pkcs1_sha256_verify(fx.rsa_n, fx.rsa_e, data, sig), "C_SignFinal mp",
                   "multi-part RSA signature does not verify on the host")

    def mp_aes_cbc(self, s: Any) -> None:
        """Multi-part AES-CBC-PAD encrypt, then decrypt, in random chunks: the
        ciphertext must equal a single-part C_Encrypt's with the same IV (CBC
        is deterministic), the plaintext the data; no byte twice or lost
        across a replay."""
        fx = self.soak.fixed
        data, iv = self.data(32 * 1024), os.urandom(16)
        mech = Mechanism.AES_CBC_PAD
        self.call("C_EncryptInit mp", s.encrypt_init, fx.aes, mechanism=mech, mechanism_param=iv)
        ct = b"".join([self.call("C_EncryptUpdate mp", s.encrypt_update, c)
                       for c in self.chunks(data, 4096)])
        ct += self.call("C_EncryptFinal mp", s.encrypt_final)
        one = self.call("C_Encrypt mp-ref", s.encrypt, fx.aes, data, mechanism=mech,
                        mechanism_param=iv)
        self.check(ct == one, "C_EncryptFinal mp",
                   "multi-part AES-CBC ciphertext differs from the single-part one")
        self.call("C_DecryptInit mp", s.decrypt_init, fx.aes, mechanism=mech, mechanism_param=iv)
        pt = b"".join([self.call("C_DecryptUpdate mp", s.decrypt_update, c)
                       for c in self.chunks(ct, 4096)])
        pt += self.call("C_DecryptFinal mp", s.decrypt_final)
        self.check(pt == data, "C_DecryptFinal mp", "multi-part AES-CBC round trip gave other data")

    def ec_sign(self, s: Any) -> None:
        fx = self.soak.fixed
        digest = hashlib.sha256(self.data()).digest()
        sig = self.call("C_Sign ec", s.sign, fx.ec_priv, digest, mechanism=Mechanism.ECDSA)
        ok = self.call("C_Verify ec", s.verify, fx.ec_pub, digest, sig, mechanism=Mechanism.ECDSA)
        self.check(ok is True, "C_Verify", "valid ECDSA signature rejected")
        if self.rng.random() < EC_HOST_SAMPLE:
            self.check(ecdsa_p256_verify(fx.ec_point, digest, sig), "C_Sign",
                       "ECDSA signature does not verify on the host")

    def _round_trip(self, s: Any, key: int, data: bytes, tag: str) -> None:
        fx = self.soak.fixed
        if fx.aes_mech == Mechanism.AES_CBC_PAD:
            iv = os.urandom(16)
            ct = self.call(f"C_Encrypt {tag}", s.encrypt, key, data, mechanism=fx.aes_mech,
                           mechanism_param=iv)
            self.check(len(ct) == (len(data) // 16 + 1) * 16 and ct[:16] != data[:16],
                       f"C_Encrypt {tag}", "AES-CBC-PAD ciphertext of the wrong length")
            pt = self.call(f"C_Decrypt {tag}", s.decrypt, key, ct, mechanism=fx.aes_mech,
                           mechanism_param=iv)
        else:
            data = data[: max(16, len(data) // 16 * 16)].ljust(16, b"\0")
            ct = self.call(f"C_Encrypt {tag}", s.encrypt, key, data, mechanism=fx.aes_mech)
            self.check(len(ct) == len(data), f"C_Encrypt {tag}",
                       "AES-ECB ciphertext of the wrong length")
            pt = self.call(f"C_Decrypt {tag}", s.decrypt, key, ct, mechanism=fx.aes_mech)
        self.check(pt == data, f"C_Decrypt {tag}", "AES round trip gave other data")

    def aes_round_trip(self, s: Any) -> None:
        fx = self.soak.fixed
        if self.rng.random() < 0.2:  # deterministic: equal to the reference made before
            if fx.aes_mech == Mechanism.AES_CBC_PAD:
                ct = self.call("C_Encrypt ref", s.encrypt, fx.aes, FIXED_DATA,
                               mechanism=fx.aes_mech, mechanism_param=bytes(16))
            else:
                ct = self.call("C_Encrypt ref", s.encrypt, fx.aes, BLOCK, mechanism=fx.aes_mech)
            self.check(ct == fx.aes_ref, "C_Encrypt", "AES ciphertext differs from the reference")
            return
        self._round_trip(s, fx.aes, self.data(), "aes")

    def digest(self, s: Any) -> None:
        mech, name = self.rng.choice([(Mechanism.SHA256, "sha256"), (Mechanism.SHA512, "sha512")])
        data = os.urandom(self.rng.randint(0, 8192))
        out = self.call("C_Digest", s.digest, data, mechanism=mech)
        self.check(out == hashlib.new(name, data).digest(), "C_Digest", f"{name} differs")

    def random_bytes(self, s: Any) -> None:
        n = self.rng.randint(1, 1024)
        out = self.call("C_GenerateRandom", s.generate_random, n)
        self.check(isinstance(out, bytes) and len(out) == n, "C_GenerateRandom",
                   "random output of the wrong length")

    def unwrap(self, s: Any) -> None:
        wkey, blob, expect = self.soak.fixed.wrap  # type: ignore[misc]
        key = self.call("C_UnwrapKey", s.unwrap_key, wkey, blob, ObjectClass.SECRET_KEY,
                        KeyType.AES, mechanism=Mechanism.AES_KEY_WRAP, label="soak-unwrapped")
        try:
            ct = self.call("C_Encrypt unwrapped", s.encrypt, key, BLOCK,
                           mechanism=Mechanism.AES_ECB)
            self.check(ct == expect, "C_UnwrapKey", "unwrapped key differs from the wrapped one")
        finally:
            self.call("C_DestroyObject", s.destroy_object, key)

    def _label(self, kind: str) -> tuple[str, bytes]:
        self.count += 1
        return f"soak-{kind}-{self.index}-{self.count}", os.urandom(16)

    def session_key(self, s: Any) -> None:
        label, kid = self._label("sk")
        key = self.call("C_GenerateKey", s.generate_key, KeyType.AES, 128, label=label, id=kid)
        try:
            self._round_trip(s, key, self.data(512), "new-sk")
        finally:
            self.call("C_DestroyObject", s.destroy_object, key)

    def _settle(self, s: Any, handles: list[int], ids: list[Identity], used_ok: bool) -> None:
        """Keep the new token objects (some of them) or destroy them; record which."""
        rec = self.soak.rec
        if used_ok and rec.kept_count() < MAX_KEPT and self.rng.random() < 0.5:
            rec.token_objects(ids, "kept")
            return
        try:
            for h in handles:
                self.call("C_DestroyObject", s.destroy_object, h)
        except CallFailed:
            return  # stays uncertain: it may exist on some members
        rec.token_objects(ids, "destroyed")

    def token_key(self, s: Any) -> None:
        label, kid = self._label("tk")
        ids = [(CLS_SECRET, "AES", label, kid.hex())]
        self.soak.rec.token_objects(ids, "uncertain")
        key = self.call("C_GenerateKey", s.generate_key, KeyType.AES, 256, label=label, id=kid,
                        token=True)
        used = False
        try:
            self._round_trip(s, key, self.data(512), "new-tk")
            used = True
        finally:
            self._settle(s, [key], ids, used)

    def token_keypair(self, s: Any) -> None:
        label, kid = self._label("tp")
        ids = [(CLS_PUBLIC, "EC", label, kid.hex()), (CLS_PRIVATE, "EC", label, kid.hex())]
        self.soak.rec.token_objects(ids, "uncertain")
        pub, priv = self.call("C_GenerateKeyPair", s.generate_keypair, KeyType.EC,
                              curve="secp256r1", label=label, id=kid, token=True)
        used = False
        try:
            point = ec_point_from_der(self.call("C_GetAttributeValue", s.get_attribute, pub,
                                                Attribute.EC_POINT))
            digest = hashlib.sha256(self.data()).digest()
            sig = self.call("C_Sign new-ec", s.sign, priv, digest, mechanism=Mechanism.ECDSA)
            self.check(ecdsa_p256_verify(point, digest, sig), "C_Sign",
                       "new EC key's signature does not verify on the host")
            used = True
        finally:
            self._settle(s, [priv, pub], ids, used)
