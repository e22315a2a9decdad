"""Standby members on real lab members (3: two active, one standby).

The standby serves no call while an active member serves, gets every object
made through the group, serves every call (no application error) once both
active members are killed, and steps back when they are in service again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from enginehelpers import make_engines, wait_for
from pkcs11 import Attribute, KeyType, Mechanism

from hacli.engine import Engine
from hacli.engine.halog import LOG_NAME
from hacli.engine.member import MemberState

pytestmark = pytest.mark.lab

CALLS = 20


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    yield from make_engines(tmp_path)


def test_standby_serves_only_while_no_active_member_does(healthy_lab3, engine_factory,
                                                          member_client, tmp_path) -> None:
    lab = healthy_lab3
    a0, a1, sb = lab.members()
    engine = engine_factory(lab, interval=1, standby=(sb.serial,), synchronize=True)
    g = engine.group()
    ops = g.op_counts
    label, label2 = "standby-made-while-standby", "standby-made-while-promoted"
    assert g.role_of(sb.serial) == "standby"
    with g.open_session() as s:
        s.login(lab.pin())

        def encrypt(key: int) -> bytes:
            return s.encrypt(key, bytes(16), mechanism=Mechanism.AES_ECB)

        key = s.generate_key(KeyType.AES, 256, label=label, token=True)
        made = [key]
        try:
            # made while the standby was standby: it is on the standby's own token
            client = member_client(lab, sb.label)
            count = f"len(list(session.get_objects({{Attribute.LABEL: {label!r}}})))"
            assert client.call(count)["value"] == "1"
            expected = encrypt(key)

            before = ops()
            assert all(encrypt(key) == expected for _ in range(CALLS))
            after = ops()
            assert after[sb.serial] == before[sb.serial]  # the standby served nothing
            assert sum(after.values()) - sum(before.values()) == CALLS

            lab.fail(a0.serial)
            lab.fail(a1.serial)
            before = ops()
            # every call is served (one failover each for the first two)
            assert all(encrypt(key) == expected for _ in range(CALLS))
            assert ops()[sb.serial] - before[sb.serial] == CALLS
            assert g.role_of(sb.serial) == "promoted"
            # a private key served by the standby: it was logged in like any member
            key2 = s.generate_key(KeyType.AES, 256, label=label2, token=True)
            made.append(key2)
            assert s.get_attribute(key2, Attribute.PRIVATE) is True
            expected2 = encrypt(key2)

            lab.restore(a0.serial)
            lab.restore(a1.serial)
            # calls through the group recover the active members (interval 1 s)
            assert wait_for(lambda: (encrypt(key), all(
                m.state is MemberState.ALIVE for m in g.members))[1], timeout=20)
            assert g.role_of(sb.serial) == "standby"
            # made while it was promoted: served (copied to the actives on
            # their return, or by the standby for an active that lacks it)
            assert encrypt(key2) == expected2
            before = ops()
            assert all(encrypt(key) == expected for _ in range(CALLS))
            assert ops()[sb.serial] == before[sb.serial]  # standing by again
        finally:
            for k in made:
                s.destroy_object(k)
    events = [line.split()[2:4] for line in
              (tmp_path / "halog" / LOG_NAME).read_text().splitlines()]
    roles = [e for e in events if e[1].startswith("standby-")]
    assert roles == [[sb.serial, "standby-promoted"], [sb.serial, "standby-demoted"]]
