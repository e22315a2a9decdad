"""Helpers shared by the engine's lab tests (tests/test_engine_*.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hacli.conf.model_types import GroupConf, HAConfig, HASettings, MemberLocation
from hacli.engine import Engine, provision_transport_key
from hacli.lab import find_tools
from hacli.lab.procs import wait_until


def lab_config(lab: Any, log_dir: Path, *, interval: int = 1, timeout_ms: int = 2000,
               reconn: int = -1, mode: str = "activeBasic", ha_only: bool = False,
               synchronize: bool = False, standby: tuple[str, ...] = (),
               concurrency: int = HASettings.member_concurrency,
               journal_bytes: int = HASettings.multipart_journal_bytes,
               log_format: str = "text") -> HAConfig:
    """The lab's group as an HAConfig, as the lab's Chrystoki.conf has it (members
    behind the lab's own p11-kit build, which carries AES key wrap)."""
    ms = lab.members()
    return HAConfig(
        settings=HASettings(reconn_att=reconn, auto_reconnect_interval=interval,
                            receive_timeout_ms=timeout_ms, ha_log_enabled=True,
                            ha_log_path=str(log_dir), recovery_mode=mode, ha_only=ha_only,
                            member_concurrency=concurrency,
                            multipart_journal_bytes=journal_bytes,
                            ha_log_format=log_format),
        groups=(GroupConf(0, lab.group_label, lab.group_serial, tuple(m.serial for m in ms),
                          synchronize=synchronize, standby=standby),),
        members={m.serial: MemberLocation(m.serial, lab.client_library, dict(m.env)) for m in ms},
    )


def direct_config(lab: Any, log_dir: Path, **kw: Any) -> HAConfig:
    """The lab's group with every member opened *directly* through libsofthsm2.so
    (each with its own softhsm2.conf, so each member is its own module instance),
    bypassing p11-kit: members cannot be crashed, but one can be made unreachable
    by pointing its location at a missing library."""
    cfg = lab_config(lab, log_dir, **kw)
    lib = find_tools().softhsm2
    env = {m.serial: m.softhsm2_env for m in lab.members()}
    return dataclasses.replace(
        cfg, members={s: MemberLocation(s, lib, dict(env[s])) for s in cfg.members})


class FakeClock:
    """A clock for the recovery policy that moves only when told (``advance``)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> bool:
    """Poll ``cond`` until it is truthy (no fixed sleeps)."""
    return wait_until(lambda: bool(cond()), timeout, step)


def codes(engine: Engine) -> dict[str, str]:
    st = engine.group().status()
    return {m.serial: m.status for m in st.members} | {"group": st.status}


def make_engines(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Body of the ``engine_factory`` fixture of the engine test modules:
    ``engine_factory(lab, **lab_config kwargs)`` -> Engine (``clock``: the
    recovery policy's clock, e.g. a fake one); closed after the test."""
    engines: list[Engine] = []

    def make(lab: Any, direct: bool = False, clock: Callable[[], float] = time.monotonic,
             **kw: Any) -> Engine:
        cfg = (direct_config if direct else lab_config)(lab, tmp_path / "halog", **kw)
        provision_transport_key(cfg, lab.group_label, lab.so_pin(), lab.pin())
        e = Engine(cfg, clock=clock)
        engines.append(e)
        return e

    yield make
    for e in engines:
        e.close()


__all__ = ["FakeClock", "codes", "direct_config", "lab_config", "make_engines", "wait_for"]
