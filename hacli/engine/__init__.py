"""The embedded HA engine: several PKCS#11 tokens as one virtual HA slot.

Quick use (see docs/engine.md)::

    from hacli.engine import Engine
    with Engine(config) as engine:              # config: hacli.conf.model_types.HAConfig
        group = engine.group("hagroup")
        with group.open_session() as s:
            s.login(pin)
            pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="k")
            sig = s.sign(priv, b"data", mechanism=Mechanism.SHA256_RSA_PKCS)
        print(engine.status())

No click or rich imports here: the CLI is a layer over this package.
"""

from __future__ import annotations

from hacli.engine.ckr import (
    CKR,
    CKR_CODES,
    CKR_NAMES,
    CKRKind,
    ckr_name,
    ckr_value,
    is_member_failure,
)
from hacli.engine.engine import Engine
from hacli.engine.exceptions import CallTimeout, CKRError, GroupDownError
from hacli.engine.group import HAGroup
from hacli.engine.halog import EVENTS as HA_LOG_EVENTS
from hacli.engine.halog import HALog
from hacli.engine.member import TRANSPORT_LABEL, Member, MemberState
from hacli.engine.p11compat import unlock_cached_properties
from hacli.engine.policy import RecoveryPolicy
from hacli.engine.session import VirtualSession
from hacli.engine.transport import provision_transport_key
from hacli.engine.types import (
    HA_SLOT_DESCRIPTION,
    GroupStatus,
    InventoryDiff,
    MemberInventory,
    MemberStatus,
    ObjectSummary,
    RecoveryOutcome,
    RecoveryResult,
    RecoveryState,
    SessionInfo,
    SlotInfo,
    SyncFailure,
    SyncReport,
    TokenInfo,
)

__all__ = [
    "CKR",
    "CKR_CODES",
    "CKR_NAMES",
    "HA_LOG_EVENTS",
    "HA_SLOT_DESCRIPTION",
    "TRANSPORT_LABEL",
    "CKRError",
    "CKRKind",
    "CallTimeout",
    "Engine",
    "GroupDownError",
    "GroupStatus",
    "HAGroup",
    "HALog",
    "InventoryDiff",
    "Member",
    "MemberInventory",
    "MemberState",
    "MemberStatus",
    "ObjectSummary",
    "RecoveryOutcome",
    "RecoveryPolicy",
    "RecoveryResult",
    "RecoveryState",
    "SessionInfo",
    "SlotInfo",
    "SyncFailure",
    "SyncReport",
    "TokenInfo",
    "VirtualSession",
    "ckr_name",
    "ckr_value",
    "is_member_failure",
    "provision_transport_key",
]

# Before any key object is read: python-pkcs11's lazily read key attributes
# must not share one process-wide lock across members (see p11compat).
unlock_cached_properties()
