"""Virtual sessions: what an application (or the CKDemo-style menu) talks to.

A :class:`VirtualSession` has an integer handle and hands out integer object
handles; both stay valid across failover and recovery.  Every call runs the
recovery policy, then goes to a member chosen by the balancer (single-part
operations), to every member (object creation, destruction, attribute
changes: replicated), or to the one member the session is pinned to
(``HAGroup.open_session(member=...)``: direct member access, no failover).

Errors are :class:`~hacli.engine.exceptions.CKRError` with the ``CKR_*`` name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util import ec as _ec

from hacli.engine import multipart
from hacli.engine.ckr import CKR
from hacli.engine.exceptions import CKRError
from hacli.engine.multipart import FUNCTIONS, MultiPart
from hacli.engine.operations import SessionOperations
from hacli.engine.templates import (
    Template,
    checked,
    ha_key_attrs,
    key_template,
    random_id,
    take_id,
)
from hacli.engine.types import SessionInfo, TokenInfo

if TYPE_CHECKING:
    from hacli.engine.group import HAGroup
    from hacli.engine.member import Connection, Member
    from hacli.engine.p11types import P11Key

T = TypeVar("T")


class VirtualSession:
    """A session on a virtual HA slot (or pinned to one member).

    Use as a context manager to close it.  Thread-safe for independent calls;
    like a PKCS#11 session, a find operation belongs to one caller at a time.
    """

    def __init__(self, group: HAGroup, handle: int, rw: bool = True, only: Member | None = None,
                 slot_id: int | None = None):
        self.group = group
        self.handle = handle
        self.rw = rw
        self.only = only
        #: the slot it was opened on (see :meth:`HAGroup.open_session`)
        self.slot_id = slot_id
        self.closed = False
        self._found: list[int] | None = None
        #: its multi-part operations (the table lives in operations.py)
        self._ops = SessionOperations(group.operations)

    def __repr__(self) -> str:
        pin = f" member={self.only.serial}" if self.only else ""
        return f"<VirtualSession {self.handle} group={self.group.label}{pin}>"

    def __enter__(self) -> VirtualSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- session management ------------------------------------------------
    def _check(self, operation: str) -> None:
        if self.closed:
            raise CKRError(CKR.SESSION_HANDLE_INVALID, operation)

    def _writable(self, template: Template, operation: str) -> None:
        if not self.rw and template.get(Attribute.TOKEN):
            raise CKRError(CKR.SESSION_READ_ONLY, operation)

    def _replicable(self, template: dict[Any, Any], given_id: bytes | None,
                    operation: str) -> tuple[dict[Any, Any], bytes]:
        """A secret or private key's template as a group makes it (writable
        session, replicable attributes), and its CKA_ID."""
        self._writable(template, operation)
        t = ha_key_attrs(template, operation)
        return t, take_id(given_id, t)

    def _member_failed(self, member: Member) -> None:
        """Called by the group (its lock held) when a member is marked down:
        multi-part operations running there are over (CKR_DEVICE_ERROR next)."""
        self._ops.member_failed(member)

    def close(self) -> None:
        """Close the session: active multi-part operations end; its session
        objects are destroyed on every member."""
        if self.closed:
            return
        self.closed = True
        self._abort_operations()
        self.group._session_closed(self)

    def _abort_operations(self) -> None:
        """End every multi-part operation of this session (on its member)."""
        self._ops.abort_all()

    def info(self) -> SessionInfo:
        """Session info (its slot, state, R/W, login)."""
        self._check("C_GetSessionInfo")
        return SessionInfo(handle=self.handle, slot_id=self.slot_id, group=self.group.label,
                           rw=self.rw, logged_in=self.group.logged_in,
                           member=self.only.serial if self.only else None,
                           so_logged_in=self.group.so_logged_in)

    def login(self, pin: str, so: bool = False) -> None:
        """Log the user (``so``: the Security Officer) in, on every member of the group.

        As PKCS#11 says, the SO cannot log in while a read-only session of
        the application is open (``CKR_SESSION_READ_ONLY_EXISTS``).
        """
        self._check("C_Login")
        if so and any(not vs.rw for vs in self.group.sessions()):
            raise CKRError(CKR.SESSION_READ_ONLY_EXISTS, "C_Login",
                           detail="close the read-only sessions first")
        self.group.login(pin, so)

    def set_pin(self, old: str, new: str) -> tuple[str, ...]:
        """``C_SetPIN``: on a session of the HA slot on every member (all or
        nothing as far as possible), on a member session on that member only.
        The PIN of the role logged in (else the user's); the serials changed."""
        self._check("C_SetPIN")
        if not self.rw:
            raise CKRError(CKR.SESSION_READ_ONLY, "C_SetPIN")
        return self.group.set_pin(old, new, self.only.serial if self.only else None)

    def init_pin(self, pin: str) -> tuple[str, ...]:
        """``C_InitPIN``: the SO (logged in) sets the user PIN, on every member
        (a member session: on that member); the serials set."""
        self._check("C_InitPIN")
        if not self.rw:
            raise CKRError(CKR.SESSION_READ_ONLY, "C_InitPIN")
        return self.group.init_pin(pin, self.only.serial if self.only else None)

    def logout(self) -> None:
        """Log the user out (of every member)."""
        self._check("C_Logout")
        self.group.logout()

    def token_info(self) -> TokenInfo:
        self._check("C_GetTokenInfo")
        return self.group.token_info()

    def mechanisms(self) -> list[Any]:
        """Mechanisms of the slot (those of the member that answers)."""
        self._check("C_GetMechanismList")
        return sorted(self._run("C_GetMechanismList",
                                lambda m, c: set(c.token.slot.get_mechanisms())), key=int)

    def mechanism_info(self, mechanism: Any) -> Any:
        self._check("C_GetMechanismInfo")
        return self._run("C_GetMechanismInfo",
                         lambda m, c: c.token.slot.get_mechanism_info(mechanism))

    # -- plumbing --------------------------------------------------------
    def _run(self, operation: str, fn: Callable[..., T], handles: Sequence[int] = ()) -> T:
        self._check(operation)
        vobjs = [self.group.vobject(h, operation) for h in handles]
        return self.group.execute(operation, fn, vobjs, self.only)

    def _run_on_key(self, operation: str, fn: Callable[..., T], key: int,
                    args: tuple[Any, ...]) -> T:
        """``fn(member, conn, key_object, *args)`` on one member (the hot path)."""
        self._check(operation)
        return self.group.execute(operation, fn, (self.group.vobject(key, operation),),
                                  self.only, args)

    def _create(self, operation: str, fn: Any, handles: Sequence[int] = (),
                replay: bool = False) -> list[int]:
        self._check(operation)
        vobjs = [self.group.vobject(h, operation) for h in handles]
        created = self.group.create(operation, fn, vobjs, owner=self.handle, only=self.only,
                                    replay=replay)
        return [v.handle for v in created]

    # -- objects -----------------------------------------------------------
    def create_object(self, template: Template) -> int:
        """C_CreateObject; replicated to every member."""
        t = checked(template, "C_CreateObject")
        self._writable(t, "C_CreateObject")
        cls = t.get(Attribute.CLASS)
        if cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY):
            t = ha_key_attrs(t, "C_CreateObject")
        if cls in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            t.setdefault(Attribute.ID, random_id())
        # replicated by creating it from the same template on every member: the
        # values came from the caller, nothing is read back from a member
        return self._create("C_CreateObject", lambda m, c: [c.work.create_object(t)],
                            replay=True)[0]

    def copy_object(self, handle: int, template: Template | None = None) -> int:
        """C_CopyObject; the copy is replicated to every member."""
        t = checked(template, "C_CopyObject")
        self._writable(t, "C_CopyObject")
        return self._create("C_CopyObject", lambda m, c, o: [o.copy(t)], [handle],
                            replay=True)[0]

    def destroy_object(self, handle: int) -> None:
        """C_DestroyObject on every member."""
        self._check("C_DestroyObject")
        self.group.destroy(self.group.vobject(handle, "C_DestroyObject"), self.only)

    def find_objects(self, template: Template | None = None) -> list[int]:
        """Find objects matching ``template``; the search runs on one member."""
        t = checked(template, "C_FindObjectsInit")

        def task(m: Member, conn: Connection) -> list[int]:
            out = []
            for obj in conn.work.get_objects(t):
                out.append(self.group.register_found(m, conn, obj, self.handle).handle)
            return out

        return self._run("C_FindObjects", task)

    def find_objects_init(self, template: Template | None = None) -> None:
        """CKDemo-style find: init runs the search (on one member) ..."""
        if self._found is not None:
            raise CKRError(CKR.OPERATION_ACTIVE, "C_FindObjectsInit")
        self._found = self.find_objects(template)

    def find_objects_next(self, max_count: int = 10) -> list[int]:
        """... next returns up to ``max_count`` handles ..."""
        if self._found is None:
            raise CKRError(CKR.OPERATION_NOT_INITIALIZED, "C_FindObjects")
        out, self._found = self._found[:max_count], self._found[max_count:]
        return out

    def find_objects_final(self) -> None:
        """... final ends it."""
        if self._found is None:
            raise CKRError(CKR.OPERATION_NOT_INITIALIZED, "C_FindObjectsFinal")
        self._found = None

    def get_attributes(self, handle: int, attributes: Iterable[Any]) -> dict[Any, Any]:
        """C_GetAttributeValue (one member answers)."""
        keys = list(attributes)
        return self._run("C_GetAttributeValue",
                         lambda m, c, o: cast("dict[Any, Any]", o.get_attributes(keys)),
                         [handle])

    def get_attribute(self, handle: int, attribute: Any) -> Any:
        return self._run("C_GetAttributeValue", lambda m, c, o: o[attribute], [handle])

    def set_attributes(self, handle: int, attributes: Template) -> None:
        """C_SetAttributeValue on every member."""
        self._check("C_SetAttributeValue")
        self.group.set_attributes(self.group.vobject(handle, "C_SetAttributeValue"),
                                  checked(attributes, "C_SetAttributeValue"), self.only)

    def object_class(self, handle: int) -> Any:
        return self.group.vobject(handle).cls

    # -- key generation ------------------------------------------------------
    def generate_key(self, key_type: KeyType, bits: int | None = None, *, label: str | None = None,
                     id: bytes | None = None, token: bool = False, capabilities: int | None = None,
                     template: Template | None = None, mechanism: Any = None) -> int:
        """Generate a secret key once and copy it to every member."""
        t = key_template(ObjectClass.SECRET_KEY, key_type, capabilities, template, token,
                         "C_GenerateKey")
        t, kid = self._replicable(t, id, "C_GenerateKey")

        self._check("C_GenerateKey")
        self.group.recovery_tick()  # whether keys can travel depends on which members serve
        self.group.generation_mode("C_GenerateKey", self.only)

        def task(m: Member, c: Connection) -> list[Any]:
            return [c.work.generate_key(key_type, bits, id=kid, label=label, store=token,
                                        template=t, mechanism=mechanism)]

        return self._create("C_GenerateKey", task)[0]

    def generate_keypair(self, key_type: KeyType, bits: int | None = None, *,
                         curve: str | None = None, label: str | None = None,
                         id: bytes | None = None, token: bool = False,
                         capabilities: int | None = None,
                         public_template: Template | None = None,
                         private_template: Template | None = None,
                         mechanism: Any = None) -> tuple[int, int]:
        """Generate a key pair once and copy it to every member: (public, private)."""
        pub = key_template(ObjectClass.PUBLIC_KEY, key_type, capabilities, public_template,
                           token, "C_GenerateKeyPair")
        priv = key_template(ObjectClass.PRIVATE_KEY, key_type, capabilities,
                            private_template, token, "C_GenerateKeyPair")
        if key_type == KeyType.EC:
            if curve is None and Attribute.EC_PARAMS not in pub:
                curve = "secp256r1"
            if curve is not None:
                pub[Attribute.EC_PARAMS] = _ec.encode_named_curve_parameters(curve)
        priv, kid = self._replicable(priv, id, "C_GenerateKeyPair")

        self._check("C_GenerateKeyPair")
        self.group.recovery_tick()  # whether keys can travel depends on which members serve
        self.group.generation_mode("C_GenerateKeyPair", self.only)

        def task(m: Member, c: Connection) -> list[Any]:
            return list(c.work.generate_keypair(key_type, bits, id=kid, label=label, store=token,
                                                public_template=pub, private_template=priv,
                                                mechanism=mechanism))

        pub_h, priv_h = self._create("C_GenerateKeyPair", task)
        return pub_h, priv_h

    # -- single-part cryptography (load balanced) -----------------------------
    # (module-level functions and an argument tuple, not a closure per call:
    # the HA layer's own cost is what stands between an application and its HSM)
    def sign(self, key: int, data: bytes, mechanism: Any = None,
             mechanism_param: Any = None) -> bytes:
        return self._run_on_key("C_Sign", _sign, key, (data, mechanism, mechanism_param))

    def verify(self, key: int, data: bytes, signature: bytes, mechanism: Any = None,
               mechanism_param: Any = None) -> bool:
        """True when the signature is valid (CKR_SIGNATURE_INVALID -> False)."""
        return self._run_on_key("C_Verify", _verify, key,
                                (data, signature, mechanism, mechanism_param))

    def encrypt(self, key: int, data: bytes, mechanism: Any = None,
                mechanism_param: Any = None) -> bytes:
        return self._run_on_key("C_Encrypt", _encrypt, key, (data, mechanism, mechanism_param))

    def decrypt(self, key: int, data: bytes, mechanism: Any = None,
                mechanism_param: Any = None) -> bytes:
        return self._run_on_key("C_Decrypt", _decrypt, key, (data, mechanism, mechanism_param))

    def digest(self, data: bytes, mechanism: Any = pkcs11.Mechanism.SHA256,
               mechanism_param: Any = None) -> bytes:
        self._check("C_Digest")
        return self.group.execute("C_Digest", _digest, (), self.only,
                                  (data, mechanism, mechanism_param))

    def digest_key(self, key: int, mechanism: Any = pkcs11.Mechanism.SHA256,
                   before: bytes = b"", after: bytes = b"") -> bytes:
        """The digest of ``before``, the value of the secret key ``key``, and
        ``after``: ``C_DigestInit``, ``C_DigestUpdate``, ``C_DigestKey``,
        ``C_DigestUpdate``, ``C_DigestFinal`` on one member (load balanced).

        The key's value never leaves the token: the token feeds it to the
        digest itself (a way to compare keys across members, or to derive a
        check value, without reading them).
        """
        return self._run_on_key("C_DigestKey", _digest_key, key, (mechanism, before, after))

    def generate_random(self, nbytes: int) -> bytes:
        self._check("C_GenerateRandom")
        return self.group.execute("C_GenerateRandom", _generate_random, (), self.only,
                                  (nbytes * 8,))

    def seed_random(self, seed: bytes) -> None:
        self._run("C_SeedRandom", lambda m, c: c.work.seed_random(seed))

    def wrap_key(self, wrapping_key: int, key: int, mechanism: Any = None,
                 mechanism_param: Any = None) -> bytes:
        return self._run("C_WrapKey", lambda m, c, w, k: cast(bytes, w.wrap_key(
            k, mechanism=mechanism, mechanism_param=mechanism_param)), [wrapping_key, key])

    def unwrap_key(self, unwrapping_key: int, wrapped: bytes, object_class: ObjectClass,
                   key_type: KeyType, *, label: str | None = None, id: bytes | None = None,
                   token: bool = False, capabilities: int | None = None,
                   template: Template | None = None, mechanism: Any = None,
                   mechanism_param: Any = None) -> int:
        """C_UnwrapKey on one member; the new key is copied to every member."""
        t = key_template(object_class, key_type, capabilities, template, token,
                         "C_UnwrapKey")
        t, kid = self._replicable(t, id, "C_UnwrapKey")

        def task(m: Member, c: Connection, u: Any) -> list[Any]:
            return [u.unwrap_key(object_class, key_type, wrapped, id=kid, label=label,
                                 store=token, template=t, mechanism=mechanism,
                                 mechanism_param=mechanism_param)]

        # replicated by unwrapping the same blob on every member
        return self._create("C_UnwrapKey", task, [unwrapping_key], replay=True)[0]

    def derive_key(self, base_key: int, key_type: KeyType, bits: int, *, mechanism: Any = None,
                   mechanism_param: Any = None, label: str | None = None,
                   id: bytes | None = None, token: bool = False,
                   capabilities: int | None = None, template: Template | None = None) -> int:
        """C_DeriveKey (e.g. ECDH1_DERIVE) on one member; the result is copied to every member."""
        t = key_template(ObjectClass.SECRET_KEY, key_type, capabilities, template, token,
                         "C_DeriveKey")
        t, kid = self._replicable(t, id, "C_DeriveKey")

        def task(m: Member, c: Connection, b: Any) -> list[Any]:
            return [b.derive_key(key_type, bits, id=kid, label=label, store=token, template=t,
                                 mechanism=mechanism, mechanism_param=mechanism_param)]

        # replicated by the same derivation on every member (deterministic)
        return self._create("C_DeriveKey", task, [base_key], replay=True)[0]

    # -- multi-part operations (pinned to the member chosen at init) -------------
    def _op_init(self, kind: str, key: int | None, mechanism: Any, param: Any) -> None:
        fn = FUNCTIONS[kind][0]
        self._check(fn)
        vobj = self.group.vobject(key, fn) if key is not None else None
        self._ops.init(kind, fn, vobj, mechanism, param, self.only, lambda: self.closed)

    def _op_step(self, kind: str, final: bool, action: Callable[[MultiPart], T]) -> T:
        fn = FUNCTIONS[kind][2 if final else 1]
        self._check(fn)
        return self._ops.step(kind, fn, final, action)

    @staticmethod
    def _chunk(data: Any, operation: str) -> bytes:
        if isinstance(data, str):
            return data.encode("utf-8")
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        raise CKRError(CKR.ARGUMENTS_BAD, operation, detail="data must be bytes")

    def _update(self, kind: str, data: Any) -> bytes:
        def action(op: MultiPart) -> bytes:
            chunk = self._chunk(data, FUNCTIONS[kind][1])
            if op.deferred is not None:
                op.deferred.append(chunk)
                return b""
            return multipart.feed(op, chunk)

        return self._op_step(kind, False, action)

    def _final(self, kind: str) -> bytes:
        def action(op: MultiPart) -> bytes:
            result, out = multipart.finish(op)
            # the body's result: the signature or digest (python-pkcs11's
            # sign/digest), None for encrypt/decrypt (their output is ``out``)
            return cast(bytes, result) if kind in ("sign", "digest") else out

        return self._op_step(kind, True, action)

    def active_operations(self) -> dict[str, str | None]:
        """Multi-part operations in progress: kind -> serial of the member serving it."""
        return self._ops.active()

    def sign_init(self, key: int, mechanism: Any = None, mechanism_param: Any = None) -> None:
        """C_SignInit on the member the balancer picks; the operation stays there."""
        self._op_init("sign", key, mechanism, mechanism_param)

    def sign_update(self, data: bytes) -> None:
        """C_SignUpdate with one chunk."""
        self._update("sign", data)

    def sign_final(self) -> bytes:
        """C_SignFinal: the signature; the operation ends."""
        return self._final("sign")

    def verify_init(self, key: int, mechanism: Any = None, mechanism_param: Any = None) -> None:
        """C_VerifyInit (the operation stays on the member that began it)."""
        self._op_init("verify", key, mechanism, mechanism_param)

    def verify_update(self, data: bytes) -> None:
        """C_VerifyUpdate with one chunk."""
        self._update("verify", data)

    def verify_final(self, signature: bytes) -> bool:
        """C_VerifyFinal: True when the signature is valid; the operation ends.

        CKR_SIGNATURE_INVALID and CKR_SIGNATURE_LEN_RANGE give False, as
        :meth:`verify` does.
        """
        def action(op: MultiPart) -> bool:
            sig = self._chunk(signature, "C_VerifyFinal")
            if op.deferred is None:
                return multipart.finish_verify(op, sig)
            # signature length unknown at init: the whole operation runs now
            chunks, (mech, param) = op.deferred, op.deferred_args
            kw: dict[str, Any] = {}
            if mech is not None:
                kw["mechanism"] = mech
            if param is not None:
                kw["mechanism_param"] = param
            vobj = self.group.vobject(op.key_handle or 0, "C_VerifyFinal")
            return self.group.execute(
                "C_VerifyFinal", lambda m, c, k: cast(bool, k.verify(iter(chunks), sig, **kw)),
                [vobj], self.only)

        return self._op_step("verify", True, action)

    def encrypt_init(self, key: int, mechanism: Any = None,
                     mechanism_param: Any = None) -> None:
        """C_EncryptInit (the operation stays on the member that began it)."""
        self._op_init("encrypt", key, mechanism, mechanism_param)

    def encrypt_update(self, data: bytes) -> bytes:
        """C_EncryptUpdate: the ciphertext this chunk completes (may be empty)."""
        return self._update("encrypt", data)

    def encrypt_final(self) -> bytes:
        """C_EncryptFinal: the last ciphertext part; the operation ends."""
        return self._final("encrypt")

    def decrypt_init(self, key: int, mechanism: Any = None,
                     mechanism_param: Any = None) -> None:
        """C_DecryptInit (the operation stays on the member that began it)."""
        self._op_init("decrypt", key, mechanism, mechanism_param)

    def decrypt_update(self, data: bytes) -> bytes:
        """C_DecryptUpdate: the plaintext this chunk completes (may be empty)."""
        return self._update("decrypt", data)

    def decrypt_final(self) -> bytes:
        """C_DecryptFinal: the last plaintext part; the operation ends."""
        return self._final("decrypt")

    def digest_init(self, mechanism: Any = pkcs11.Mechanism.SHA256,
                    mechanism_param: Any = None) -> None:
        """C_DigestInit (the operation stays on the member that began it)."""
        self._op_init("digest", None, mechanism, mechanism_param)

    def digest_update(self, data: bytes) -> None:
        """C_DigestUpdate with one chunk."""
        self._update("digest", data)

    def digest_final(self) -> bytes:
        """C_DigestFinal: the digest; the operation ends."""
        return self._final("digest")


# -- the single-part calls, run on a member: fn(member, conn, [key,] *args) ----

def _sign(m: Member, c: Connection, key: P11Key, data: bytes, mechanism: Any,
          param: Any) -> bytes:
    return key.sign(data, mechanism=mechanism, mechanism_param=param)


def _verify(m: Member, c: Connection, key: P11Key, data: bytes, signature: bytes,
            mechanism: Any, param: Any) -> bool:
    return key.verify(data, signature, mechanism=mechanism,
                      mechanism_param=param)


def _encrypt(m: Member, c: Connection, key: P11Key, data: bytes, mechanism: Any,
             param: Any) -> bytes:
    return key.encrypt(data, mechanism=mechanism,
                       mechanism_param=param)


def _decrypt(m: Member, c: Connection, key: P11Key, data: bytes, mechanism: Any,
             param: Any) -> bytes:
    return key.decrypt(data, mechanism=mechanism,
                       mechanism_param=param)


def _digest(m: Member, c: Connection, data: bytes, mechanism: Any, param: Any) -> bytes:
    return c.work.digest(data, mechanism=mechanism,
                         mechanism_param=param)


def _digest_key(m: Member, c: Connection, key: P11Key, mechanism: Any, before: bytes,
                after: bytes) -> bytes:
    # python-pkcs11 calls C_DigestKey for a Key among the chunks it digests
    # (and skips empty byte strings)
    return c.work.digest(iter((before, key, after)), mechanism=mechanism)


def _generate_random(m: Member, c: Connection, nbits: int) -> bytes:
    return c.work.generate_random(nbits)


__all__ = ["VirtualSession"]
