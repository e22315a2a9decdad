"""Multi-part failover seen by an application of ``hacli serve`` (issue 12, item 1).

A module of its own: the test kills both members in turn, which a long-lived
server of another module (test_serve_lab.py's ``served``) would have to
recover from before its next test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from clihelpers import HACLI
from test_serve_lab import Served, _readline, pin, stop_serve, wait_log

from hacli.lab import Lab, find_tools

pytestmark = pytest.mark.lab

MP_CLIENT = textwrap.dedent("""
    import sys
    import pkcs11
    from pkcs11 import KeyType, Mechanism
    library, pin = sys.argv[1], sys.argv[2]
    SIGN = Mechanism.SHA256_RSA_PKCS
    token = pkcs11.lib(library).get_token(token_label="labgroup")
    data = bytes(range(256)) * 1024  # 256 KiB, fed in 4 KiB chunks
    with token.open(user_pin=pin, rw=True) as s:
        # token keys: a killed member comes back holding them
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="serve-mp", store=True)
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(4):  # the balancer takes turns: the dead member is noticed
            s.generate_random(64)

        def chunks():
            for i in range(0, len(data), 4096):
                if i == len(data) // 2:
                    print("half", flush=True)
                    sys.stdin.readline()
                yield data[i:i + 4096]

        sig = priv.sign(chunks(), mechanism=SIGN)  # C_SignInit, 64 C_SignUpdate, C_SignFinal
        ok = pub.verify(data, sig, mechanism=SIGN) and sig == priv.sign(data, mechanism=SIGN)
        for key in (pub, priv):
            key.destroy()
        print("done", ok, flush=True)
""")


def test_multipart_sign_survives_member_kill_through_serve(healthy_lab: Lab,
                                                           tmp_path: Path) -> None:
    """A python-pkcs11 application signs 256 KiB in parts through ``hacli
    serve``; the member running the operation is killed half-way: the
    application gets a valid signature, and the server logs the replay.
    (member1 is killed before the init, so the operation runs on member0;
    member1 is back, recovered in the background, before member0 is killed.)"""
    lab = healthy_lab
    conf = tmp_path / "Chrystoki.conf"
    conf.write_text(lab.conf_path.read_text()
                    .replace("AutoReconnectInterval = 5;", "AutoReconnectInterval = 1;")
                    .replace("= activeBasic;", "= activeEnhanced;"))
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "hacli.sock"
    serve = subprocess.Popen([HACLI, "--conf", str(conf), "serve", "--socket", str(sock)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    s = Served(serve, sock, f"unix:path={sock}", _readline(serve, 60), lab)
    m0, m1 = (m.serial for m in lab.members())
    proc = subprocess.Popen([sys.executable, "-c", MP_CLIENT, find_tools().p11kit_client,
                             pin(lab)], env=s.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    try:
        assert _readline(proc, 60) == "ready\n"
        lab.fail("member1")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _readline(proc, 60) == "half\n"
        wait_log(s, m1, "-> down")
        lab.restore("member1")
        wait_log(s, m1, "-> alive")
        lab.fail("member0")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.splitlines()[-1] == "done True", out
        assert "moved from " + m0 + " to " + m1 in wait_log(s, "multi-part sign moved")
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.restore("member0")
        stop_serve(s)
