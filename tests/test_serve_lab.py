"""``hacli serve`` with real clients we did not write, over the lab's HA group.

One ``hacli serve`` process per module (the ``served`` fixture) over the
session lab; its teardown is the SIGTERM test: exit 0, socket removed, no
traceback, no PIN on stderr.  Clients: OpenSC ``pkcs11-tool`` through Debian 12's
``p11-kit-client.so`` (0.24.1, protocol 0) and through the lab's 0.25.5 build
(protocol 1), python-pkcs11 in a child process, and hacli's own codec as a raw
client where PKCS#11 semantics must be seen byte by byte.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clihelpers import HACLI

from hacli.engine.ckr import CKR
from hacli.lab import Lab, find_tools
from hacli.serve.codec import CALL_IDS, AttrRequest, Mechanism, Reader, Writer
from hacli.serve.wire import encode_frame, read_frame

SYSTEM_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
HANDSHAKE = b"PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"
# the CK_RV numbers of hacli's one table
CKR_OK, CKR_ATTRIBUTE_SENSITIVE = CKR.OK.rv, CKR.ATTRIBUTE_SENSITIVE.rv
CKR_ATTRIBUTE_TYPE_INVALID = CKR.ATTRIBUTE_TYPE_INVALID.rv
CKR_BUFFER_TOO_SMALL = CKR.BUFFER_TOO_SMALL.rv
CKR_FUNCTION_NOT_SUPPORTED = CKR.FUNCTION_NOT_SUPPORTED.rv


@dataclass
class Served:
    """A running ``hacli serve``."""

    proc: subprocess.Popen[str]
    socket: Path
    address: str
    stdout_line: str
    lab: Lab

    def env(self) -> dict[str, str]:
        return {**os.environ, "P11_KIT_SERVER_ADDRESS": self.address}


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise AssertionError("hacli serve printed nothing in time")
    return proc.stdout.readline()


def start_serve(lab: Lab, directory: Path, *extra: str) -> Served:
    directory.mkdir(mode=0o700, exist_ok=True)
    sock = directory / "hacli.sock"
    proc = subprocess.Popen([HACLI, "--conf", str(lab.conf_path), "serve", "--socket", str(sock),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = _readline(proc, 60)
    return Served(proc, sock, f"unix:path={sock}", line, lab)


def stop_serve(s: Served, sig: int = signal.SIGTERM) -> str:
    s.proc.send_signal(sig)
    _out, err = s.proc.communicate(timeout=60)
    assert s.proc.returncode == 0, err
    assert not s.socket.exists()
    assert "Traceback" not in err, err
    assert s.lab.pin_file.read_text().strip() not in err
    return err


@pytest.fixture(scope="module")
def served(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = start_serve(lab, tmp_path_factory.mktemp("serve") / "run")
    yield s
    err = stop_serve(s)
    assert "connection" in err  # one line per connection


def pin(lab: Lab) -> str:
    return lab.pin_file.read_text().strip()


def tool(served: Served, *args: str, module: str = SYSTEM_CLIENT,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["pkcs11-tool", "--module", module, *args], env=served.env(),
                         capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


# -- the command ------------------------------------------------------------------
def test_prints_the_address_line_and_makes_an_owner_only_socket(served: Served) -> None:
    assert served.stdout_line == (f"P11_KIT_SERVER_ADDRESS={served.address}; "
                                  "export P11_KIT_SERVER_ADDRESS;\n")
    assert stat.S_IMODE(served.socket.stat().st_mode) == 0o600


def test_refuses_a_directory_others_can_write(lab: Lab, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    res = subprocess.run([HACLI, "--conf", str(lab.conf_path), "serve", "--socket",
                          str(shared / "s.sock")], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --socket: directory"), res.stderr
    assert not (shared / "s.sock").exists()


def test_unknown_group_is_a_usage_error(lab: Lab, tmp_path: Path) -> None:
    res = subprocess.run([HACLI, "--conf", str(lab.conf_path), "serve", "--socket",
                          str(tmp_path / "s.sock"), "--group", "nosuch"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2
    assert res.stderr.startswith("Error: --group: no HA group 'nosuch'"), res.stderr


# -- pkcs11-tool through both client builds ----------------------------------------------
@pytest.mark.parametrize("module", ["system", "lab"])
def test_pkcs11_tool_lists_the_ha_slot(served: Served, module: str) -> None:
    path = SYSTEM_CLIENT if module == "system" else find_tools().p11kit_client
    out = tool(served, "-L", module=path).stdout
    assert "HA Virtual Card Slot" in out
    assert "token label        : labgroup" in out
    assert "Member Slot" not in out  # only with --members
    mechs = tool(served, "-M", module=path).stdout
    assert "RSA-PKCS-KEY-PAIR-GEN, keySize={512,16384}, generate_key_pair" in mechs


def test_pkcs11_tool_keypairgen_sign_verify(served: Served, tmp_path: Path) -> None:
    p = pin(served.lab)
    for key_type, kid, mech in (("rsa:2048", "a1", "SHA256-RSA-PKCS"),
                                ("EC:prime256v1", "a2", "ECDSA")):  # SoftHSM2 2.6: no ECDSA-SHA*
        tool(served, "--login", "--pin", p, "--keypairgen", "--key-type", key_type,
             "--label", f"serve-{kid}", "--id", kid)
        data = tmp_path / "data"
        data.write_bytes(b"signed through hacli serve, 32 b")  # a digest's length for ECDSA
        sig = tmp_path / f"sig-{kid}"
        tool(served, "--login", "--pin", p, "--sign", "--id", kid, "-m", mech,
             "-i", str(data), "-o", str(sig))
        out = tool(served, "--login", "--pin", p, "--verify", "--id", kid, "-m", mech,
                   "-i", str(data), "--signature-file", str(sig)).stdout
        assert "Signature is valid" in out
        sig.write_bytes(bytes(b ^ 1 for b in sig.read_bytes()))
        bad = tool(served, "--login", "--pin", p, "--verify", "--id", kid, "-m", mech,
                   "-i", str(data), "--signature-file", str(sig), check=False)
        assert "Invalid signature" in bad.stdout + bad.stderr


def test_pkcs11_tool_self_test(served: Served) -> None:
    """``--test --login``: every section SoftHSM2 can pass passes.  pkcs11-tool
    then tries RSA-OAEP with a label, which SoftHSM2 itself refuses
    (CKR_ARGUMENTS_BAD, the same straight through a member's p11-kit server)."""
    res = tool(served, "--login", "--pin", pin(served.lab), "--test", check=False)
    out = res.stdout + res.stderr
    assert "C_SeedRandom() and C_GenerateRandom():\n  seems to be OK" in out
    assert "all 4 digest functions seem to work" in out
    assert "SHA256: OK" in out
    assert "RSA-PKCS: OK" in out
    assert "RSA-X-509: OK" in out
    errors = [x for x in out.splitlines() if "ERR" in x or x.startswith("error:")]
    assert errors == ["error: PKCS11 function C_Decrypt failed: rv = CKR_ARGUMENTS_BAD (0x7)"], out
    assert "encoding parameter (Label) present" in out


# -- python-pkcs11 -----------------------------------------------------------------
CLIENT = textwrap.dedent("""
    import os, sys, time
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    library, pin, count, stop_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    lib = pkcs11.lib(library)
    token = lib.get_token(token_label="labgroup")
    with token.open(user_pin=pin, rw=True) as s:
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="serve-py", store=False)
        failed = verified = done = 0
        deadline = time.monotonic() + 120
        # count signatures, or (count 0) until the stop file appears
        while (done < count) if count else (not os.path.exists(stop_file)
                                            and time.monotonic() < deadline):
            data = b"message %d" % done
            done += 1
            try:
                sig = priv.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
                verified += pub.verify(data, sig, mechanism=Mechanism.SHA256_RSA_PKCS)
            except pkcs11.PKCS11Error as e:
                failed += 1
                print("failed", done, type(e).__name__, flush=True)
            if done == 1:
                print("first", flush=True)
        chunks = [b"a" * 100, b"b" * 100]
        assert priv.sign(iter(chunks), mechanism=Mechanism.SHA256_RSA_PKCS) == \\
            priv.sign(b"".join(chunks), mechanism=Mechanism.SHA256_RSA_PKCS)
        aes = s.generate_key(KeyType.AES, 256, store=False)
        iv = s.generate_random(128)
        ct = aes.encrypt(b"x" * 40, mechanism_param=iv)
        assert aes.decrypt(ct, mechanism_param=iv) == b"x" * 40
        assert s.digest(b"abc", mechanism=Mechanism.SHA256).hex().startswith("ba7816bf")
        print("done", failed, verified == done, done, flush=True)
""")


def python_client(served: Served, count: int,
                  stop_file: Path | None = None) -> subprocess.Popen[str]:
    # the lab's 0.25.5 client: Debian 12's 0.24.1 cannot send AES-CBC's IV (docs/lab.md)
    return subprocess.Popen([sys.executable, "-c", CLIENT, find_tools().p11kit_client,
                             pin(served.lab), str(count), str(stop_file or "")],
                            env=served.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_python_pkcs11_signs_encrypts_digests(served: Served) -> None:
    proc = python_client(served, 3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == "done 0 True 3"


def wait_log(s: Served, *words: str, timeout: float = 60) -> str:
    """The next line of the server's log holding every word (HA events are logged)."""
    assert s.proc.stderr is not None
    with selectors.DefaultSelector() as sel:
        sel.register(s.proc.stderr, selectors.EVENT_READ)
        while sel.select(timeout):
            line = s.proc.stderr.readline()
            if all(w in line for w in words):
                return line
    raise AssertionError(f"no log line with {words}")


def test_failover_seen_by_a_long_lived_client(healthy_lab: Lab, tmp_path: Path) -> None:
    """A python-pkcs11 client signs in a loop while member0 is crashed (and comes
    back), then member1 is frozen -- never both at once: zero failed
    signatures, every one verifies; the server logs each HA event."""
    s = start_serve(healthy_lab, tmp_path / "run")
    m0, m1 = (m.serial for m in healthy_lab.members())
    stop = tmp_path / "stop"
    try:
        proc = python_client(s, 0, stop)
        assert _readline(proc, 60) == "first\n"
        healthy_lab.fail("member0")
        wait_log(s, m0, "-> down")
        healthy_lab.restore("member0")
        wait_log(s, m0, "-> alive")  # recovered by the policy while the client signs
        healthy_lab.hang("member1")
        wait_log(s, m1, "-> down")
        stop.touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        done = out.splitlines()[-1].split()
        assert done[:3] == ["done", "0", "True"], out
        assert int(done[3]) > 10
    finally:
        healthy_lab.restore("member1")
        stop_serve(s)


# -- raw protocol: PKCS#11 2.40 attribute semantics, garbage, peers -------------------
class RawClient:
    """hacli's codec as a p11-kit client, to see answers byte by byte."""

    def __init__(self, address: str, version: int = 1) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(address.removeprefix("unix:path="))
        self.sock.sendall(bytes([version]))
        self.version = self.sock.recv(1)[0]
        self.code = 0

    def call(self, w: Writer) -> Reader:
        self.code += 1
        self.sock.sendall(encode_frame(self.code, w.finish(), b"test"))
        frame = read_frame(self.sock)
        assert frame is not None and frame[0] == self.code
        return Reader(frame[1], self.version, response=True)

    def request(self, name: str) -> Writer:
        return Writer(CALL_IDS[name], request=True)

    def initialize(self) -> None:
        w = self.request("C_Initialize")
        w.byte_array(HANDSHAKE)
        w.byte(0)
        w.byte_array(b"")
        assert self.call(w).name == "C_Initialize"

    def open_session(self) -> int:
        """C_Initialize, then a R/W session on the first slot listed."""
        self.initialize()
        w = self.request("C_GetSlotList")
        w.byte(1)
        w.ulong_buffer(8)
        slots = ok(self.call(w)).ulong_array()
        assert isinstance(slots, list) and slots
        w = self.request("C_OpenSession")
        w.ulong(slots[0])
        w.ulong(0x6)
        return ok(self.call(w)).ulong()

    def login(self, session: int, secret: str) -> int:
        """C_Login as the user: the CK_RV."""
        w = self.request("C_Login")
        w.ulong(session)
        w.ulong(1)
        w.byte_array(secret.encode())
        r = self.call(w)
        return r.ulong() if r.name == "ERROR" else CKR_OK

    def close(self) -> None:
        self.sock.close()


def ok(r: Reader) -> Reader:
    assert r.name != "ERROR", hex(r.ulong())
    return r


def test_get_attribute_value_follows_pkcs11_2_40(served: Served) -> None:
    c = RawClient(served.address)
    try:
        session = c.open_session()
        assert c.login(session, pin(served.lab)) == CKR_OK
        w = c.request("C_GenerateKey")
        w.ulong(session)
        w.mechanism(Mechanism(0x1080, None))  # CKM_AES_KEY_GEN
        w.attribute_array([(0x161, struct.pack("<Q", 32), 8),   # CKA_VALUE_LEN
                           (0x003, b"serve-raw", 9), (0x108, b"\x01", 1)])  # CKA_SIGN
        key = ok(c.call(w)).ulong()

        # C_Sign: a length query and a too small buffer keep the operation and say the
        # length (not valid + length: the client's CKR_OK / CKR_BUFFER_TOO_SMALL);
        # a big enough buffer ends it
        w = c.request("C_SignInit")
        w.ulong(session)
        w.mechanism(Mechanism(0x108A, None))  # CKM_AES_CMAC
        w.ulong(key)
        ok(c.call(w))
        def sign(room: int | None) -> Reader:
            w = c.request("C_Sign")
            w.ulong(session)
            w.byte_array(b"data to MAC")
            w.byte_buffer(room)
            return c.call(w)

        length_only = b"\x00" + struct.pack(">I", 16)
        assert ok(sign(None)).data.endswith(length_only)   # length query
        assert ok(sign(4)).data.endswith(length_only)      # too small: kept
        mac = ok(sign(16)).byte_array()
        assert mac is not None and len(mac) == 16
        r = sign(16)
        answers = [r.name, r.ulong()]
        assert answers == ["ERROR", CKR.OPERATION_NOT_INITIALIZED.rv]  # it was ended

        def get(wanted: list[AttrRequest]) -> tuple[list[tuple[int, int]], int]:
            w = c.request("C_GetAttributeValue")
            w.ulong(session)
            w.ulong(key)
            w.attribute_buffer(wanted)
            r = ok(c.call(w))
            attrs = r.attribute_array()
            rv = r.ulong()
            r.done()
            lengths = [(a.type, a.length) for a in attrs]
            return lengths, rv

        # length queries (NULL pValue): lengths, CKR_OK
        assert get([AttrRequest(0x003, 0), AttrRequest(0x000, 0)]) == \
            ([(0x003, 9), (0x000, 8)], CKR_OK)
        # a big enough buffer gets the value; a too small one CK_UNAVAILABLE_INFORMATION
        # and CKR_BUFFER_TOO_SMALL, the others are still filled in
        assert get([AttrRequest(0x003, 64), AttrRequest(0x000, 8)]) == \
            ([(0x003, 9), (0x000, 8)], CKR_OK)
        assert get([AttrRequest(0x003, 4), AttrRequest(0x000, 8)]) == \
            ([(0x003, -1), (0x000, 8)], CKR_BUFFER_TOO_SMALL)
        # the secret value is sensitive; an attribute a secret key lacks is invalid
        assert get([AttrRequest(0x011, 64), AttrRequest(0x000, 8)]) == \
            ([(0x011, -1), (0x000, 8)], CKR_ATTRIBUTE_SENSITIVE)
        assert get([AttrRequest(0x120, 64)]) == ([(0x120, -1)], CKR_ATTRIBUTE_TYPE_INVALID)
        # a call hacli does not serve says so
        w = c.request("C_GetOperationState")
        w.ulong(session)
        w.byte_buffer(None)
        r = c.call(w)
        assert (r.name, r.ulong()) == ("ERROR", CKR_FUNCTION_NOT_SUPPORTED)
    finally:
        c.close()


def test_garbage_and_truncated_frames_drop_only_that_connection(served: Served) -> None:
    rng = random.Random(20261203)
    good = RawClient(served.address)
    try:
        good.initialize()
        for i in range(40):
            bad = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bad.settimeout(30)
            bad.connect(str(served.socket))
            if i % 4:
                bad.sendall(b"\x01")
                assert bad.recv(1) == b"\x01"
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            frame = encode_frame(rng.randrange(1, 5), body)
            if i % 3 == 0:
                frame = frame[:rng.randrange(1, len(frame))]  # truncated, then hung up
            bad.sendall(frame)
            bad.shutdown(socket.SHUT_WR)
            while bad.recv(4096):  # the server answers an ERROR or drops; it never hangs
                pass
            bad.close()
            w = good.request("C_GetInfo")
            assert ok(good.call(w)).name == "C_GetInfo"  # the other client is unaffected
    finally:
        good.close()
    tool(served, "-L")  # and new clients are served


def _valid_requests(session: int) -> list[bytes]:
    """Well-formed requests that reach the handlers (no login: a fuzzed PIN could
    count against the tokens)."""
    out = []
    w = Writer(CALL_IDS["C_GetSlotInfo"], request=True)
    w.ulong(3)
    out.append(w.finish())
    w = Writer(CALL_IDS["C_FindObjectsInit"], request=True)
    w.ulong(session)
    w.attribute_array([(0x000, struct.pack("<Q", 2), 8), (0x003, b"serve", 5),
                       (0x001, b"\x01", 1), (0x110, b"20260101", 8)])
    out.append(w.finish())
    w = Writer(CALL_IDS["C_GetAttributeValue"], request=True)
    w.ulong(session)
    w.ulong(1)
    w.attribute_buffer([AttrRequest(0x003, 0), AttrRequest(0x000, 8)])
    out.append(w.finish())
    w = Writer(CALL_IDS["C_DigestInit"], request=True)
    w.ulong(session)
    w.mechanism(Mechanism(0x250, None))
    out.append(w.finish())
    w = Writer(CALL_IDS["C_GenerateRandom"], request=True)
    w.ulong(session)
    w.byte_buffer(32)
    out.append(w.finish())
    return out


def test_mutated_requests_are_answered_or_dropped(served: Served) -> None:
    """Bit flips in well-formed requests, after a real C_Initialize and C_OpenSession:
    each gets an answer (a CK_RV) or a hang-up, and the server serves on."""
    rng = random.Random(11)
    for i in range(30):
        c = RawClient(served.address)
        try:
            session = c.open_session()
            body = bytearray(rng.choice(_valid_requests(session)))
            for _ in range(1 + i % 3):
                body[rng.randrange(8, len(body))] ^= 1 << rng.randrange(8)
            c.sock.sendall(encode_frame(7, bytes(body)))
            frame = read_frame(c.sock)
            if frame is not None:  # answered: a well-formed response of the call or ERROR
                Reader(frame[1], c.version, response=True)
        finally:
            c.close()
    assert "HA Virtual Card Slot" in tool(served, "-L").stdout


def test_peer_credentials_are_checked(lab: Lab) -> None:
    """--allow-uid opens the socket to others (0666 in a 0711 directory), and the
    peer uid decides: an admitted uid is served, any other dropped unanswered."""
    # pytest's own directories are 0700: other users could not reach the socket
    top = Path(tempfile.mkdtemp(prefix="hacli-serve-"))
    top.chmod(0o711)
    run_dir = top / "run"
    run_dir.mkdir()
    run_dir.chmod(0o711)
    s = start_serve(lab, run_dir, "--allow-uid", "4242", "--members", "--json-log")
    try:
        assert stat.S_IMODE(s.socket.stat().st_mode) == 0o666
        listed = tool(s, "-L").stdout  # root is the owner here: admitted
        assert listed.count("Member Slot") == 2 and "HA Virtual Card Slot" in listed
        # a member slot is that member's token, through the engine
        on_member = tool(s, "--slot", "1", "--login", "--pin", pin(lab), "-O").stdout
        assert "hacli-transport" in on_member
        probe = textwrap.dedent("""
            import os, socket, sys
            os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
            c = socket.socket(socket.AF_UNIX); c.settimeout(30); c.connect(sys.argv[1])
            try:
                c.sendall(b"\\x01")
                print(repr(c.recv(1)))
            except (BrokenPipeError, ConnectionResetError):  # dropped unanswered
                print(repr(b""))
        """)
        answers = {}
        for uid in (4242, 4343):
            res = subprocess.run([sys.executable, "-c", probe, str(s.socket), str(uid)],
                                 capture_output=True, text=True, timeout=60, check=False)
            assert res.returncode == 0, res.stderr
            answers[uid] = res.stdout.strip()
        assert answers == {4242: "b'\\x01'", 4343: "b''"}
    finally:
        err = stop_serve(s, signal.SIGINT)
        shutil.rmtree(top)
    events = [json.loads(line) for line in err.splitlines()]  # --json-log: JSON lines only
    assert any(e["message"].endswith("uid 4343 refused: uid not allowed") for e in events)
    assert {e["source"] for e in events} <= {"hacli.serve", "hacli.engine"}


def test_stop_lets_a_call_in_flight_finish(lab: Lab, tmp_path: Path) -> None:
    """SIGTERM while a key pair is being generated: the call finishes and is
    answered, then the connection ends, the socket goes, exit 0.  (It starts over
    a stale socket, as a crashed server leaves one: replaced.)"""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run_dir / "hacli.sock"))
    stale.close()
    s = start_serve(lab, run_dir)
    c = RawClient(s.address)
    try:
        session = c.open_session()  # answered: the connection's thread is running
        assert c.login(session, pin(lab)) == CKR_OK
        w = c.request("C_GenerateKeyPair")
        w.ulong(session)
        w.mechanism(Mechanism(0x0, None))  # CKM_RSA_PKCS_KEY_PAIR_GEN
        w.attribute_array([(0x121, struct.pack("<Q", 2048), 8)])  # CKA_MODULUS_BITS
        w.attribute_array([])
        c.code += 1
        c.sock.sendall(encode_frame(c.code, w.finish()))
        s.proc.send_signal(signal.SIGTERM)  # the request is sent, not yet answered
        frame = read_frame(c.sock)
        assert frame is not None
        r = ok(Reader(frame[1], c.version, response=True))
        assert r.name == "C_GenerateKeyPair" and r.ulong() != r.ulong()
        assert read_frame(c.sock) is None  # then the server hangs up
    finally:
        c.close()
        stop_serve(s)


def test_ha_status_beside_a_running_server(served: Served) -> None:
    res = subprocess.run([HACLI, "--conf", str(served.lab.conf_path), "ha", "status", "--json"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode in (0, 3), res.stderr
    assert json.loads(res.stdout)
    assert "HA Virtual Card Slot" in tool(served, "-L").stdout


KEYS_CLIENT = textwrap.dedent("""
    import sys
    import pkcs11
    from pkcs11 import Attribute, KDF, KeyType, Mechanism, ObjectClass
    lib = pkcs11.lib(sys.argv[1])
    token = lib.get_token(token_label="labgroup")
    block = bytes(16)
    with token.open(user_pin=sys.argv[2], rw=True) as s:
        # unwrap: an AES key value encrypted under an RSA key, unwrapped by its private half
        value = bytes(range(32))
        known = s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                 Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: value,
                                 Attribute.ENCRYPT: True, Attribute.TOKEN: False})
        pub, priv = s.generate_keypair(KeyType.RSA, 2048, store=False)
        blob = pub.encrypt(value, mechanism=Mechanism.RSA_PKCS)
        new = priv.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, blob,
                              mechanism=Mechanism.RSA_PKCS, template={Attribute.ENCRYPT: True})
        ecb = Mechanism.AES_ECB
        assert new.encrypt(block, mechanism=ecb) == known.encrypt(block, mechanism=ecb)
        # derive: ECDH both ways gives the same AES key
        a_pub, a_priv = s.generate_keypair(KeyType.EC, store=False,
            public_template={Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
            capabilities=pkcs11.MechanismFlag.DERIVE)
        b_pub, b_priv = s.generate_keypair(KeyType.EC, store=False,
            public_template={Attribute.EC_PARAMS: bytes.fromhex("06082a8648ce3d030107")},
            capabilities=pkcs11.MechanismFlag.DERIVE)
        def point(k):  # the raw point out of its DER OCTET STRING
            raw = k[Attribute.EC_POINT]
            return raw[2:] if raw[:2] == b"\\x04\\x41" else raw
        k1 = a_priv.derive_key(KeyType.AES, 256, mechanism_param=(KDF.NULL, None, point(b_pub)),
                               template={Attribute.ENCRYPT: True})
        k2 = b_priv.derive_key(KeyType.AES, 256, mechanism_param=(KDF.NULL, None, point(a_pub)),
                               template={Attribute.ENCRYPT: True})
        assert k1.encrypt(block, mechanism=ecb) == k2.encrypt(block, mechanism=ecb)
        print("ok", flush=True)
""")


def test_unwrap_and_derive_through_the_ha_slot(served: Served) -> None:
    res = subprocess.run([sys.executable, "-c", KEYS_CLIENT, find_tools().p11kit_client,
                          pin(served.lab)], env=served.env(), capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


# -- GnuTLS and OpenSSL (Debian packages gnutls-bin, libengine-pkcs11-openssl) ----------
def test_gnutls_p11tool_lists_tokens_and_objects(served: Served) -> None:
    p = pin(served.lab)
    tool(served, "--login", "--pin", p, "--keypairgen", "--key-type", "rsa:2048",
         "--label", "serve-gnutls", "--id", "c1")
    env = served.env()
    tokens = subprocess.run(["p11tool", "--provider", SYSTEM_CLIENT, "--list-tokens"], env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "Label: labgroup" in tokens and "Manufacturer: hacli" in tokens
    objects = subprocess.run(["p11tool", "--provider", SYSTEM_CLIENT, "--login", "--list-all",
                              "pkcs11:token=labgroup"], env={**env, "GNUTLS_PIN": p},
                             capture_output=True, text=True, timeout=60, check=True).stdout
    assert "object=serve-gnutls;type=private" in objects
    assert "Private key (RSA-2048)" in objects


OPENSSL_CNF = """\
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = {module}
init = 0
"""


def test_openssl_signs_through_the_pkcs11_engine(served: Served, tmp_path: Path) -> None:
    """OpenSSL signs with the HA slot's key (libp11's engine); plain openssl checks the
    signature against the public key read out of the slot."""
    p = pin(served.lab)
    tool(served, "--login", "--pin", p, "--keypairgen", "--key-type", "rsa:2048",
         "--label", "serve-openssl", "--id", "d1")
    cnf = tmp_path / "openssl.cnf"
    cnf.write_text(OPENSSL_CNF.format(module=SYSTEM_CLIENT))
    data, sig, pub = tmp_path / "data", tmp_path / "sig", tmp_path / "pub.der"
    data.write_bytes(b"signed by openssl through hacli serve")
    uri = f"pkcs11:token=labgroup;object=serve-openssl;type=private;pin-value={p}"
    subprocess.run(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine",
                    "-sign", uri, "-out", str(sig), str(data)],
                   env={**served.env(), "OPENSSL_CONF": str(cnf)}, capture_output=True,
                   text=True, timeout=60, check=True)
    tool(served, "--read-object", "--type", "pubkey", "--id", "d1", "-o", str(pub))
    res = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-keyform", "DER",
                          "-signature", str(sig), str(data)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert res.stdout.strip() == "Verified OK", res.stderr


def test_java_makes_and_lists_a_key_through_sunpkcs11(healthy_lab: Lab, tmp_path: Path) -> None:
    """Java's own PKCS#11 provider (SunPKCS11, as docs/serve.md configures it)
    generates an AES key on the HA slot with keytool and lists it; the key
    exists on every member (replicated, as any key made through the slot).
    A server of its own: every member in service when it starts."""
    served = start_serve(healthy_lab, tmp_path / "run")
    try:
        _java_through(served, tmp_path)
    finally:
        stop_serve(served)


def _java_through(served: Served, tmp_path: Path) -> None:
    cfg = tmp_path / "hacli-pkcs11.cfg"
    cfg.write_text(f"name = hacli\nlibrary = {SYSTEM_CLIENT}\nslotListIndex = 0\n")
    env = {**served.env(), "HACLI_TEST_STOREPASS": pin(served.lab)}
    store = ["-keystore", "NONE", "-storetype", "PKCS11",
             "-providerClass", "sun.security.pkcs11.SunPKCS11", "-providerArg", str(cfg),
             "-storepass:env", "HACLI_TEST_STOREPASS"]

    def keytool(*args: str) -> str:
        res = subprocess.run(["keytool", *args, *store], env=env, capture_output=True,
                             text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    keytool("-genseckey", "-alias", "serve-java", "-keyalg", "AES", "-keysize", "256")
    assert "serve-java, SecretKeyEntry" in keytool("-list")
    for m in served.lab.members():  # straight through each member's own p11-kit server
        listed = subprocess.run(
            ["pkcs11-tool", "--module", find_tools().p11kit_client, "--login", "--pin",
             pin(served.lab), "-O", "--type", "secrkey", "--label", "serve-java"],
            env={**os.environ, "P11_KIT_SERVER_ADDRESS": m.address}, capture_output=True,
            text=True, timeout=60, check=False)
        assert "serve-java" in listed.stdout, (m.serial, listed.stdout + listed.stderr)


def test_logins_are_per_connection_and_a_wrong_pin_is_not_retried(served: Served) -> None:
    """The first login goes to the tokens; a later client's PIN is compared with the
    group's; a wrong one is CKR_PIN_INCORRECT and changes nothing."""
    def state(c: RawClient, session: int) -> int:
        w = c.request("C_GetSessionInfo")
        w.ulong(session)
        r = ok(c.call(w))
        r.ulong()
        return r.ulong()

    a, b = RawClient(served.address), RawClient(served.address)
    try:
        sa, sb = a.open_session(), b.open_session()
        right = pin(served.lab)
        assert a.login(sa, right + "x") == CKR.PIN_INCORRECT.rv  # from the tokens
        assert a.login(sa, right) == CKR_OK
        assert a.login(sa, right) == CKR.USER_ALREADY_LOGGED_IN.rv
        assert b.login(sb, "wrong") == CKR.PIN_INCORRECT.rv  # compared with the group's
        assert state(b, sb) == 2                   # CKS_RW_PUBLIC_SESSION
        assert b.login(sb, right) == CKR_OK
        assert state(b, sb) == 3                   # CKS_RW_USER_FUNCTIONS
        w = b.request("C_Logout")
        w.ulong(sb)
        ok(b.call(w))
        assert state(a, sa) == 3                   # a is still logged in
    finally:
        a.close()
        b.close()


def test_a_call_with_broken_arguments_drops_the_connection(served: Served) -> None:
    c = RawClient(served.address)
    try:
        c.initialize()
        w = c.request("C_GetSlotInfo")
        body = w.buf[:]  # the call id and signature, but not its CK_SLOT_ID
        c.sock.sendall(encode_frame(99, bytes(body)))
        assert read_frame(c.sock) is None  # no answer: dropped
    finally:
        c.close()
    d = RawClient(served.address)
    try:
        d.initialize()
        w = d.request("C_GetInfo")
        assert ok(d.call(w)).name == "C_GetInfo"
    finally:
        d.close()


def test_a_live_socket_is_not_taken_over(served: Served) -> None:
    res = subprocess.run([HACLI, "--conf", str(served.lab.conf_path), "serve", "--socket",
                          str(served.socket)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [f"Error: --socket: {served.socket} exists and is not a "
                                       "stale socket (another server listening, or not a "
                                       "socket)"]
    assert "HA Virtual Card Slot" in tool(served, "-L").stdout  # the first one serves on


# -- calls of one connection side by side -------------------------------------------
SIDE_BY_SIDE_CLIENT = textwrap.dedent("""
    import sys, threading, pkcs11
    library, frozen, healthy = sys.argv[1:4]
    lib = pkcs11.lib(library)  # one connection to hacli serve for every thread
    tokens = {t.serial.decode().strip(): t for t in lib.get_tokens()}
    stuck, free = tokens[frozen].open(), tokens[healthy].open()
    print("ready", flush=True)
    sys.stdin.readline()  # the test froze the first member
    done = threading.Event()
    def on_the_frozen_member():
        try:
            stuck.generate_random(64)
        except pkcs11.PKCS11Error as e:
            print("stuck call ended:", type(e).__name__, flush=True)
        done.set()
    threading.Thread(target=on_the_frozen_member).start()
    answered = 0
    while not done.is_set():
        free.generate_random(64)
        answered += 1
    print("answered", answered, flush=True)
""")


def test_one_connection_reaches_a_member_while_another_call_waits(healthy_lab: Lab,
                                                                    tmp_path: Path) -> None:
    """p11-kit's client sends the calls of its threads over one connection
    without waiting for each other's answers: a call stuck on a frozen member
    must not hold the client's other threads (they used to wait behind it for
    the whole ReceiveTimeout)."""
    s = start_serve(healthy_lab, tmp_path / "run", "--members")
    m0, m1 = (m.serial for m in healthy_lab.members())
    try:
        proc = subprocess.Popen([sys.executable, "-c", SIDE_BY_SIDE_CLIENT,
                                 find_tools().p11kit_client, m0, m1], env=s.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n", proc.communicate()[1]
        healthy_lab.hang(m0)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        lines = out.splitlines()
        assert lines[0] == "stuck call ended: DeviceError", out
        # the other thread went on meanwhile (one at a time: none before the end)
        assert int(lines[1].split()[1]) >= 20, out
    finally:
        healthy_lab.restore(m0)
        stop_serve(s)
