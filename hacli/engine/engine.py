"""The engine: HA groups built from an :class:`~hacli.conf.model_types.HAConfig`."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hacli.conf.model_types import HAConfig, SlotNumber, number_slots
from hacli.engine import halog
from hacli.engine.ckr import CKR, ckr_name
from hacli.engine.exceptions import CKRError
from hacli.engine.group import HAGroup
from hacli.engine.member import MAPPER, Connection, Member, open_connection
from hacli.engine.members import ChangeListener
from hacli.engine.module import InstanceRegistry, ModuleInstance, make_workdir
from hacli.engine.parallel import in_parallel
from hacli.engine.policy import Clock
from hacli.engine.session import VirtualSession
from hacli.engine.stats import MemberMetrics
from hacli.engine.types import HA_SLOT_DESCRIPTION, GroupStatus, SlotInfo, TokenInfo
from hacli.errors import UsageError


class Engine:
    """Several real PKCS#11 tokens as virtual HA slots, one per configured group.

    :param config: the typed configuration (groups, members' module locations,
        HA settings).
    :param groups: labels of the groups to start (default: all).
    :param clock: monotonic clock for the recovery policy (tests inject one).
    :param state_dir: where the groups' change journals live (default
        ``$XDG_STATE_HOME``, see :mod:`hacli.engine.journal`).

    Construction connects every member in parallel, each bounded by the command
    timeout (``ReceiveTimeout``); members that cannot be reached start down.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: HAConfig, groups: Iterable[str] | None = None, *,
                 clock: Clock = time.monotonic, state_dir: Path | None = None):
        self.config = config
        self.settings = config.settings
        self._workdir = make_workdir()
        self._registry = InstanceRegistry(self._workdir, config.settings.member_concurrency)
        self._ids = itertools.count(1)
        self._closed = False
        s = self.settings
        self.log: halog.HALog | halog.NullLog = halog.open_log(s)
        timeout = max(0.001, s.receive_timeout_ms / 1000.0)
        wanted = None if groups is None else {g.lower() for g in groups}
        confs = [g for g in config.groups if wanted is None or g.label.lower() in wanted]
        if wanted is not None:
            missing = wanted - {g.label.lower() for g in confs}
            if missing:
                raise UsageError(f"no HA group named {sorted(missing)[0]!r}")
        self._members: dict[str, Member] = {}
        self.groups: list[HAGroup] = []
        try:
            for conf in confs:
                ms = []
                for serial in conf.members:
                    if serial in self._members:
                        raise UsageError(f"member {serial} is listed in more than one HA group")
                    m = Member(serial, config.location(serial), timeout)
                    self._members[serial] = m
                    ms.append(m)
                self.groups.append(HAGroup(conf, ms, settings=s, registry=self._registry,
                                           all_members=self._members.values, log=self.log,
                                           ids=self._ids, clock=clock, state_dir=state_dir))
            self._number_slots()
            in_parallel(HAGroup.start, self.groups)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Engine groups={[g.label for g in self.groups]}>"

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- groups, members, slots ------------------------------------------------
    def group(self, label: str | None = None) -> HAGroup:
        """The group with this label (case-insensitive); the only one if None."""
        if label is None:
            if len(self.groups) != 1:
                raise UsageError("several HA groups: name one")
            return self.groups[0]
        for g in self.groups:
            if g.label.lower() == label.lower():
                return g
        raise UsageError(f"no HA group named {label!r}")

    def member(self, serial: str) -> Member:
        try:
            return self._members[serial]
        except KeyError:
            raise UsageError(f"no member with serial {serial!r}") from None

    def group_of(self, serial: str) -> HAGroup:
        m = self.member(serial)
        return next(g for g in self.groups if m in g.members)

    def _numbering(self) -> list[SlotNumber]:
        return number_slots([g.conf for g in self.groups], self.settings.ha_only)

    def _number_slots(self) -> None:
        by_label = {g.label: g for g in self.groups}
        for n in self._numbering():
            if n.member is None:
                by_label[n.group].slot_id = n.slot_id

    def slots(self) -> list[SlotInfo]:
        """Member slots first (hidden with ``HAOnly``), then one HA virtual slot per group
        (numbered by :func:`hacli.conf.model_types.number_slots`)."""
        by_label = {g.label: g for g in self.groups}
        out: list[SlotInfo] = []
        for n in self._numbering():
            g = by_label[n.group]
            if n.member is not None:
                m = self._members[n.member]
                out.append(SlotInfo(slot_id=n.slot_id, description="Member Slot", kind="member",
                                    token_label="", token_serial=m.serial, group=g.label,
                                    present=m.alive))
            else:
                out.append(SlotInfo(slot_id=n.slot_id, description=HA_SLOT_DESCRIPTION,
                                    kind="ha", token_label=g.label, token_serial=g.serial,
                                    group=g.label, present=any(m.alive for m in g.members)))
        return out

    def slot(self, slot_id: int) -> SlotInfo:
        for s in self.slots():
            if s.slot_id == slot_id:
                return s
        raise CKRError(CKR.SLOT_ID_INVALID, "C_GetSlotInfo")

    def open_session(self, slot_id: int, rw: bool = True) -> VirtualSession:
        """Open a session on a slot of :meth:`slots`: a virtual HA session, or
        for a member slot a session pinned to that member (through the engine)."""
        s = self.slot(slot_id)
        g = self.group(s.group)
        if s.kind == "ha":
            return g.open_session(rw=rw)
        return g.open_session(rw=rw, member=s.token_serial, slot_id=s.slot_id)

    def token_info(self, slot_id: int) -> TokenInfo:
        s = self.slot(slot_id)
        g = self.group(s.group)
        if s.kind == "ha":
            return g.token_info()
        m = self.member(s.token_serial)
        tok = g.execute("C_GetTokenInfo", lambda mm, c: c.token.slot.get_token(), only=m)
        return TokenInfo(label=tok.label, serial=m.serial, manufacturer_id=tok.manufacturer_id,
                         model=tok.model, flags=int(tok.flags),
                         hardware_version=tok.hardware_version,
                         firmware_version=tok.firmware_version)

    # -- status ------------------------------------------------------------
    def status(self, probe: bool = True) -> list[GroupStatus]:
        """Status of every group, no PIN needed (probes the members)."""
        results: dict[str, GroupStatus] = {}

        def one(g: HAGroup) -> None:
            results[g.label] = g.status(probe=probe)

        in_parallel(one, self.groups)
        return [results[g.label] for g in self.groups]

    def metrics(self) -> list[MemberMetrics]:
        """Every member's counters and state now, group by group
        (:mod:`hacli.engine.stats`; read by :mod:`hacli.metrics`)."""
        return [mm for g in self.groups for mm in g.metrics()]

    def on_change(self, listener: ChangeListener) -> None:
        """Call ``listener`` on every member state change of every group (it
        must only queue: it may run with a group's lock held)."""
        for g in self.groups:
            g.members_set.on_change(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        for g in self.groups:
            g.members_set.remove_change_listener(listener)

    # -- direct member access (bypasses the HA layer) ---------------------------
    @contextlib.contextmanager
    def _private_instance(self, serial: str, purpose: str) -> Iterator[tuple[ModuleInstance,
                                                                              float]]:
        """A private, loaded instance of the member's module (its own login
        state, its own sessions: another application to the token), and the
        command timeout; closed afterwards."""
        loc = self.config.location(serial)
        if loc is None:
            raise UsageError(f"no module location for member {serial!r}")
        timeout = max(0.001, self.settings.receive_timeout_ms / 1000.0)
        inst = ModuleInstance(loc.library, loc.env, self._workdir, f"{purpose}-{serial}")
        try:
            inst.load(timeout)
            yield inst, timeout
        finally:
            inst.close(timeout)

    @contextlib.contextmanager
    def direct_session(self, serial: str, pin: str | None = None, rw: bool = True) -> Iterator[Any]:
        """A raw python-pkcs11 session on one member, bypassing the HA layer.

        Loads a private instance of the member's module (separate login state),
        so the HA layer's cost can be measured against it (``multitoken
        --slot SERIAL``).  The session is not protected by the command timeout.
        """
        with self._private_instance(serial, "direct") as (inst, timeout):
            conn = inst.call(open_connection, inst, serial, None, timeout=timeout)
            session = conn.work
            if pin is not None:
                session = inst.call(lambda: conn.token.open(rw=rw, user_pin=pin,
                                                            attribute_mapper=MAPPER),
                                    timeout=timeout)
            yield session

    def init_token(self, serial: str, so_pin: str, label: str,
                   user_pin: str | None = None) -> bool:
        """``C_InitToken`` on one member: every object on its token is gone.

        Runs on a private instance of the member's module (a token refuses
        ``C_InitToken`` while the application has a session on it; see
        :mod:`hacli.engine.tokeninit`).  With ``user_pin`` the user PIN is set
        afterwards (``C_InitPIN`` as the SO), and when other members of its
        group hold the group's transport key, the member gets it again
        (:func:`provision_transport_key`), so keys can be replicated to it.
        The group then takes the member out of service (its connection saw
        the token as it was) and reconnects it at once.

        Returns True when the member serves again; False when it could not
        be reconnected (e.g. the group is logged in and ``user_pin`` is not
        the group's PIN): it stays down and the recovery policy retries it.
        A wrong SO PIN is ``CKR_PIN_INCORRECT`` and changes nothing.
        """
        import pkcs11

        from hacli.engine.tokeninit import init_token
        from hacli.engine.transport import provision_transport_key

        group = self.group_of(serial)
        m = self.member(serial)
        with self._private_instance(serial, "init") as (inst, timeout):
            try:
                # C_InitToken derives keys from the PIN: allow more than a call
                inst.call(init_token, inst, serial, so_pin, label, user_pin,
                          timeout=max(10.0, timeout), operation="C_InitToken")
            except pkcs11.PKCS11Error as e:
                raise CKRError(ckr_name(e), "C_InitToken", serial) from e
        others = [o for o in group.members if o is not m and o.conn is not None]
        if user_pin is not None and any(o.conn.transport is not None for o in others
                                        if o.conn is not None):
            provision_transport_key(self.config, group.label, so_pin, user_pin)
        # the engine's connection knew the token as it was: its sessions go
        # (a module instance shared with other members is not re-initialised
        # by the recovery below), then the member leaves service and is
        # reconnected at once
        group.members_set.best_effort(m, Connection.close_sessions,
                                      operation="C_CloseSession")
        group.members_set.mark_failed(m, CKRError(CKR.TOKEN_NOT_RECOGNIZED, "C_InitToken",
                                                  serial, detail="token initialised"))
        return group.recover_now(serial)

    # -- shutdown ------------------------------------------------------------
    def close(self) -> None:
        """Stop background threads, close sessions, unload every module instance
        and remove the temporary library copies.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        for g in self.groups:
            g.stop()
            g.end_operations()
            g.forget_secrets()
        self._registry.close()
        shutil.rmtree(self._workdir, ignore_errors=True)


__all__ = ["Engine"]
