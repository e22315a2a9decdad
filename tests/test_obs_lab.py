"""Observability on real lab members: the JSON HA log, the engine's counters and
their Prometheus exposition (``ha status --prometheus``), and bad input.

Members are real SoftHSM2 tokens behind p11-kit servers, crashed with SIGKILL
(``lab.fail``) and restored; nothing of PKCS#11 is mocked.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from clihelpers import EXAMPLE, assert_one_error_line, run
from enginehelpers import make_engines, wait_for
from pkcs11 import KeyType, Mechanism
from prometheus_client.parser import text_string_to_metric_families

from hacli.cli.serve import metrics_endpoint
from hacli.conf.model import load_settings
from hacli.conf.store import load as load_file
from hacli.engine import CKRError, Engine
from hacli.engine.ckr import explain
from hacli.engine.halog import LOG_NAME, REASONS
from hacli.lab import Lab
from hacli.metrics.prometheus import exposition

pytestmark = pytest.mark.lab


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus exposition as (sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


# -- (4) haLogFormat = json --------------------------------------------------------------
def test_json_ha_log_on_a_member_going_down_and_back(healthy_lab: Lab, engine_factory,
                                                     tmp_path: Path) -> None:
    lab = healthy_lab
    m0 = lab.members()[0].serial
    engine = engine_factory(lab, log_format="json")
    g = engine.group()
    with g.open_session() as s:
        lab.fail(m0)
        g.status()
        # another engine (another process) notices the same failure: not logged twice
        engine_factory(lab, log_format="json").group().status()
        lab.restore(m0)
        assert wait_for(lambda: (s.generate_random(8), g.members[0].alive)[1])
    lines = (tmp_path / "halog" / LOG_NAME).read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line one JSON object
    mine = [e for e in events if e["member"] == m0]
    assert [e["event"] for e in mine] == ["failed", "recovered"]
    failed, recovered = mine
    assert set(failed) == {"time", "group", "member", "event", "ckr", "reason"}
    assert failed["group"] == lab.group_label
    assert failed["ckr"] == "CKR_DEVICE_ERROR" and recovered["ckr"] is None
    assert failed["reason"] == (f"{REASONS['failed']}: CKR_DEVICE_ERROR: "
                                f"{explain('CKR_DEVICE_ERROR')}")
    assert recovered["reason"] == REASONS["recovered"]
    when = dt.datetime.fromisoformat(failed["time"])
    assert failed["time"].endswith("Z") and when.utcoffset() == dt.timedelta(0)
    assert lab.pin() not in "\n".join(lines)


def test_ha_log_format_is_a_validated_setting(tmp_path: Path) -> None:
    conf = tmp_path / "Chrystoki.conf"
    conf.write_bytes(EXAMPLE.read_bytes())
    c = ["--conf", str(conf), "conf", "set"]
    assert load_settings(load_file(conf)).ha_log_format == "text"  # the default
    before = conf.read_bytes()
    assert_one_error_line(run(*c, "hacli", "haLogFormat", "xml"), 2)
    assert conf.read_bytes() == before
    assert run(*c, "hacli", "haLogFormat", "json").code == 0
    assert load_settings(load_file(conf)).ha_log_format == "json"


# -- (3) the engine's counters -------------------------------------------------------------
def test_counters_and_exposition_follow_calls_and_a_member_crash(healthy_lab: Lab,
                                                                 engine_factory) -> None:
    lab = healthy_lab
    m0, m1 = (m.serial for m in lab.members())
    engine = engine_factory(lab)
    g = engine.group()
    with g.open_session() as s:
        s.login(lab.pin())
        for _ in range(6):
            s.generate_random(16)
        aes = s.generate_key(KeyType.AES, 128, token=False)
        with pytest.raises(CKRError):  # a request error: counted, nobody's failure
            s.sign(aes, b"x", mechanism=Mechanism.SHA256_RSA_PKCS)
        before = {mm.serial: mm for mm in engine.metrics()}
        assert sum(mm.calls.get("C_GenerateRandom", 0) for mm in before.values()) == 6
        assert sum(mm.total_errors for mm in before.values()) >= 1
        for mm in before.values():
            assert sum(mm.buckets) == mm.total_calls and mm.latency_sum > 0
            assert mm.alive and mm.failovers == 0
        lab.fail(m0)
        for _ in range(4):  # balanced over both: one of them meets the dead member
            s.generate_random(16)
        text = exposition(engine.metrics).decode()  # read at "scrape" time
        after = {mm.serial: mm for mm in engine.metrics()}  # nothing ran in between
    found = samples(text)
    assert after[m0].failovers == 1 and after[m0].failures == 1
    assert not after[m0].alive and after[m0].last_failure is not None
    assert value(found, "hacli_member_up", group=lab.group_label, member=m0) == 0
    assert value(found, "hacli_member_up", group=lab.group_label, member=m1) == 1
    assert value(found, "hacli_failovers_total", group=lab.group_label, member=m0) == 1
    assert value(found, "hacli_member_failures_total", group=lab.group_label, member=m0) == 1
    assert value(found, "hacli_member_state_seconds", group=lab.group_label, member=m0,
                 state="down") >= 0
    calls = value(found, "hacli_calls_total", group=lab.group_label, member=m1,
                  operation="C_GenerateRandom")
    assert calls == after[m1].calls["C_GenerateRandom"] > before[m1].calls["C_GenerateRandom"]
    assert value(found, "hacli_call_duration_seconds_count", group=lab.group_label,
                 member=m1) == after[m1].total_calls
    assert value(found, "hacli_call_duration_seconds_bucket", group=lab.group_label,
                 member=m1, le="+Inf") == after[m1].total_calls


def test_ha_status_prometheus_prints_the_exposition(lab: Lab) -> None:
    res = run("--conf", str(lab.conf_path), "ha", "status", "--prometheus")
    assert res.code == 0, res.err
    found = samples(res.out)
    for m in lab.members():
        assert value(found, "hacli_member_up", group=lab.group_label, member=m.serial) == 1
        assert value(found, "hacli_member_in_flight", group=lab.group_label,
                     member=m.serial) == 0
    assert "HA group" not in res.out  # no table: only the exposition


@pytest.mark.parametrize("args", [
    ["ha", "status", "--interval", "2"],
    ["ha", "status", "--socket", "/nonexistent/s.status"],
    ["ha", "status", "--prometheus", "--watch"],
    ["ha", "status", "--prometheus", "--json"],
    ["ha", "status", "--watch", "--interval", "0"],
    ["ha", "status", "--watch", "--socket", "/nonexistent/s.status"],
])
def test_bad_watch_and_prometheus_options(lab: Lab, args: list[str]) -> None:
    assert_one_error_line(run("--conf", str(lab.conf_path), *args), 2)


def test_metrics_address_needs_a_port(lab: Lab, tmp_path: Path) -> None:
    res = run("--conf", str(lab.conf_path), "serve", "--socket", str(tmp_path / "s.sock"),
              "--metrics-address", "0.0.0.0")
    assert_one_error_line(res, 2)
    assert "--metrics-address needs --metrics-port" in res.err
    assert list(tmp_path.iterdir()) == []


def test_metrics_endpoint_on_ipv6_loopback() -> None:
    with metrics_endpoint(0, "::1", list) as url:
        assert url is not None and url.startswith("http://[::1]:")
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200
            assert "# TYPE hacli_member_up gauge" in r.read().decode()


def test_metrics_port_in_use_is_one_error_line(lab: Lab, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = run("--conf", str(lab.conf_path), "serve", "--socket", str(run_dir / "s.sock"),
                  "--metrics-port", str(port))
    assert_one_error_line(res, 2)
    assert f"--metrics-port: cannot listen on 127.0.0.1 port {port}" in res.err
    assert list(run_dir.iterdir()) == []
