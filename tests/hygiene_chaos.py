"""Freeze-and-kill chaos with multi-part operations in flight (body of a test subprocess).

Run by tests/test_engine_hygiene.py as ``python hygiene_chaos.py LAB_DIR LOG_DIR CYCLES``.
Each cycle starts multi-part sign operations on the HA group (on both members),
freezes the member serving the first of them (the members take turns), steps
that operation until the step times out (the member is marked down and its module
instance abandoned, with the other operations on it still parked; the stepped
one is replayed on the other member and goes on there), kills the
frozen member, restores it and recovers it, then ends the operations left.  At
the end the engine is closed and one JSON line is printed: the threads still
alive, the steps that timed out, the seconds the cycles took and how many module
copies the process keeps mapped.  The process then exits normally, so the
interpreter's own clean-up runs too (where python-pkcs11's finalizers used to
reach an unloaded module).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from hacli.engine import CKRError, Engine
from hacli.engine.module import kept_libraries
from hacli.lab import Lab
from hacli.lab.procs import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from enginehelpers import lab_config

SIGN = Mechanism.SHA256_RSA_PKCS
LABEL = "hygiene-chaos"
#: Operations started per cycle (each on the member the balancer picks).
OPS = 4


def main() -> int:
    lab_dir, log_dir, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lab = Lab(lab_dir)
    # a token key (a member's session objects die with its killed server), made
    # with time to spare: an RSA key generation on a loaded machine can outlast
    # the chaos engine's 500 ms on both members (a CI run met that)
    maker = Engine(lab_config(lab, Path(log_dir), timeout_ms=30000))
    try:
        with maker.group().open_session() as s:
            s.login(lab.pin())
            s.generate_keypair(KeyType.RSA, 2048, label=LABEL, token=True)
    finally:
        maker.close()
    engine = Engine(lab_config(lab, Path(log_dir), timeout_ms=500))
    g = engine.group()
    admin = g.open_session()
    admin.login(lab.pin())
    pub, priv = (admin.find_objects({Attribute.LABEL: LABEL, Attribute.CLASS: cls})[0]
                 for cls in (ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY))
    serials = [m.serial for m in g.members]
    timeouts = moved = lost = 0
    started = time.monotonic()
    for cycle in range(cycles):
        sessions = [g.open_session() for _ in range(OPS)]
        for s in sessions:
            s.sign_init(priv, mechanism=SIGN)
            s.sign_update(b"in flight " * 20)
        on = {i: s.active_operations()["sign"] for i, s in enumerate(sessions)}
        # freeze a member that serves an operation: the members take turns
        wanted = serials[cycle % 2]
        victim = wanted if wanted in on.values() else next(iter(on.values()))
        lab.hang(victim)
        first = next(s for i, s in enumerate(sessions) if on[i] == victim)
        # the step times out on the frozen member, which is marked down; the
        # operation is replayed on the other member (its journal) and goes on.
        # On a loaded machine the other member may miss the short timeout too:
        # then the step ends with CKR_DEVICE_ERROR (no member left), which is
        # no hygiene problem
        went_on = False
        try:
            first.sign_update(b"stuck")
            went_on = first.active_operations().get("sign") not in (None, victim)
        except CKRError as e:
            if e.ckr != "CKR_DEVICE_ERROR":
                raise
            lost += 1
        moved += went_on
        if not next(m for m in g.members if m.serial == victim).alive:
            timeouts += 1
        lab.fail(victim)
        lab.restore(victim)
        if not wait_until(lambda v=victim: g.recover_now(v) or
                          all(m.alive for m in g.members), 10.0, 0.02):
            print(json.dumps({"error": f"cycle {cycle}: {victim} not recovered"}), flush=True)
            return 3
        # end what is left: finals on the member that stayed up (and the moved
        # one), the others are closed with their operation open
        for i, s in enumerate(sessions):
            if (on[i] != victim or (s is first and went_on)) and i % 2:
                s.sign_final()
            s.close()
    elapsed = time.monotonic() - started
    for h in (pub, priv):
        admin.destroy_object(h)
    admin.close()
    engine.close()
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(json.dumps({"threads": left, "timeouts": timeouts, "moved": moved, "lost": lost,
                      "seconds": round(elapsed, 2),
                      "kept": kept_libraries()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
