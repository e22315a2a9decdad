"""One-shot commands for scripts, with pkcs11-tool's habits, over the HA slot or a member.

``hacli slots | objects | mechanisms | keygen | sign | verify | encrypt |
decrypt | random``: click wiring over the use cases of :mod:`hacli.tokenops`,
which the menu calls too.  Every command takes ``--slot ha|N|SERIAL`` (the
rule: :func:`hacli.tokenops.slots.resolve`) and ``--json``; PINs come from the
sources of :mod:`hacli.cli.pin` (no prompt when one is given).  Input is
checked before any token is touched, and ``--out`` is written atomically
after the operation succeeded: a failure leaves no file, or the old one.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, TypeVar

import click

from hacli.cli import complete, render
from hacli.cli.context import app, json_option
from hacli.cli.pin import find_pin, pin_file_option, resolve_pin
from hacli.errors import UsageError

if TYPE_CHECKING:
    from hacli.conf.model_types import HAConfig
    from hacli.engine import Engine, SlotInfo, VirtualSession
    from hacli.tokenops.mechanisms import Mech

F = TypeVar("F", bound=Callable[..., Any])
STDIO = "-"


# -- options ---------------------------------------------------------------------
class HexBytes(click.ParamType):
    """A hex string (``0a1b``, spaces and colons allowed) as bytes."""

    name = "HEX"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        text = str(value).replace(":", "").replace(" ", "")
        try:
            data = bytes.fromhex(text)
        except ValueError:
            self.fail(f"{value!r} is not hex", param, ctx)
        if not data:
            self.fail("empty", param, ctx)
        return data


def slot_options(f: F) -> F:
    """``--slot`` and ``--group``: which slot (one rule for every command)."""
    f = click.option("--group", metavar="LABEL", shell_complete=complete.groups,
                     help="HA group whose HA slot 'ha' means (default: the only or first).")(f)
    return click.option("--slot", metavar="ha|N|SERIAL", shell_complete=complete.slots,
                        help="ha = the HA virtual slot (default); N = a slot number of "
                             "`hacli slots` (as the menu numbers them); SERIAL = that "
                             "member's slot.")(f)


def key_options(f: F) -> F:
    """``--key LABEL`` and ``--id HEX``: the key to use."""
    f = click.option("--id", "key_id", type=HexBytes(),
                     help="CKA_ID of the key, when several have the label.")(f)
    return click.option("--key", "label", required=True, metavar="LABEL",
                        shell_complete=complete.keys, help="Label of the key.")(f)


def io_options(f: F) -> F:
    """``--in`` and ``--out``, files or ``-`` for stdin/stdout."""
    f = click.option("--out", "out", metavar="FILE",
                     help="Output file, written atomically; '-' or none: stdout "
                          "(with --json: hex in the JSON).")(f)
    return click.option("--in", "in_", required=True, metavar="FILE",
                        type=click.Path(dir_okay=False, allow_dash=True),
                        help="Input file; '-' reads stdin.")(f)


def mechanism_option(example: str) -> Callable[[F], F]:
    """``--mechanism NAME``: pkcs11-tool's name of a mechanism."""
    return click.option("--mechanism", "-m", required=True, metavar="NAME",
                        help=f"pkcs11-tool's name, e.g. {example} (a wrong name lists them).")


# -- start-up: the one place that reads the configuration and PIN sources -----------
class Login(enum.Enum):
    """When a command logs in."""

    NEVER = "never"
    IF_GIVEN = "if a PIN source needs no prompt"
    ALWAYS = "always (prompting on a terminal when no source is given)"


@dataclass(frozen=True)
class Startup:
    """What a command reads once, at start-up: the validated configuration, and
    the lab directory of a lab group (where the lab's PIN file is)."""

    config: HAConfig
    lab_dir: str | None

    @classmethod
    def read(cls) -> Startup:
        from hacli.conf.model import load_config

        ctx = app()
        doc = ctx.load()
        config = load_config(doc, str(ctx.path))
        if not config.groups:
            raise UsageError(f"no HA groups are configured in {ctx.path}")
        return cls(config, config.lab_dir)

    def pin(self, pin_file: str | None, login: Login) -> str | None:
        """The PIN ``login`` calls for (the one use of the PIN sources here)."""
        if login is Login.NEVER:
            return None
        if login is Login.IF_GIVEN:
            return find_pin(pin_file, self.lab_dir)
        return resolve_pin(pin_file, self.lab_dir)


@contextmanager
def engine(startup: Startup | None = None) -> Iterator[Engine]:
    """The engine over every configured group (so slot numbers are the menu's)."""
    from hacli.engine import Engine

    with Engine((startup or Startup.read()).config) as eng:
        yield eng


@contextmanager
def slot_session(slot: str | None, group: str | None, pin_file: str | None = None,
                 login: Login = Login.NEVER) -> Iterator[tuple[VirtualSession, SlotInfo]]:
    """A R/W session on the slot ``--slot`` names, logged in as ``login`` says."""
    from hacli.tokenops.slots import resolve

    startup = Startup.read()
    pin = startup.pin(pin_file, login)
    with engine(startup) as eng:
        target = resolve(eng, slot, group)
        with eng.open_session(target.slot_id) as session:
            if pin is not None:
                session.login(pin)
            yield session, target


def slot_json(slot: SlotInfo) -> dict[str, Any]:
    """The slot a command used, in its ``--json``."""
    return {"slot": slot.slot_id, "kind": slot.kind, "group": slot.group,
            "serial": slot.token_serial}


def slot_words(slot: SlotInfo) -> str:
    where = f"HA group {slot.group}" if slot.kind == "ha" else f"member {slot.token_serial}"
    return f"slot#{slot.slot_id} ({where})"


# -- data in and out ----------------------------------------------------------------
def _binary(name: Literal["stdin", "stdout"]) -> BinaryIO:
    """The binary side of stdin or stdout (CliRunner's too)."""
    stream: BinaryIO = getattr(sys, name).buffer
    return stream


def read_input(path: str, what: str = "--in") -> bytes:
    """A file's bytes, or stdin's for ``-``; ConfIOError (exit 1) when unreadable."""
    from hacli.errors import ConfIOError

    if path == STDIO:
        return _binary("stdin").read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfIOError(f"cannot read {what} {path}: {(e.strerror or str(e)).lower()}") \
            from None


def check_out(out: str | None, as_json: bool) -> None:
    """Refuse ``--out -`` with ``--json``: both would go to stdout."""
    if out == STDIO and as_json:
        raise UsageError("--out - and --json both write to stdout; leave --out out to get "
                         "the output as hex in the JSON")


def emit(data: bytes, out: str | None, as_json: bool, report: dict[str, Any],
         field: str) -> None:
    """Write ``data`` to ``--out`` (atomically) or stdout; then the report."""
    from hacli.conf.store import write_atomic

    if out not in (None, STDIO):
        write_atomic(out, data)
        report["out"] = out
    elif as_json:
        report[field] = data.hex()
    if as_json:
        render.emit_json(report)
    elif out in (None, STDIO):
        _binary("stdout").write(data)
    else:
        render.echo(f"Wrote {len(data)} bytes to {out}")


# -- commands -----------------------------------------------------------------------
@click.command()
@json_option
def slots(as_json: bool) -> None:
    """Slots, numbered as the menu numbers them; HA virtual slots marked.

    Member slots first (none with HAOnly), then one HA virtual slot per group.
    """
    from hacli.tokenops.slots import slot_list

    with engine() as eng:
        records = slot_list(eng)
    if as_json:
        render.emit_json({"slots": [r.as_dict() for r in records]})
        return
    render.table(["Slot", "Type", "Label", "Serial", "Group", "Token"],
                 [[r.slot.slot_id, "HA virtual" if r.ha else "member", r.label,
                   r.slot.token_serial, r.slot.group,
                   "present" if r.slot.present else "not present"] for r in records])


@click.command()
@slot_options
@click.option("--login", "-l", "do_login", is_flag=True,
              help="Log in to list private objects too (so does --pin-file).")
@pin_file_option
@json_option
def objects(slot: str | None, group: str | None, do_login: bool, pin_file: str | None,
            as_json: bool) -> None:
    """Objects on the slot, like pkcs11-tool -O: class, key type, size, label, ID.

    Without --login only public objects are seen (no PIN is needed).
    """
    from hacli.tokenops.objects import list_objects

    login = Login.ALWAYS if do_login or pin_file else Login.NEVER
    with slot_session(slot, group, pin_file, login) as (session, target):
        records = [r for _handle, r in list_objects(session)]
        logged_in = session.group.logged_in
    if as_json:
        render.emit_json({**slot_json(target), "logged_in": logged_in,
                          "objects": [r.as_dict() for r in records]})
        return
    render.table(["Class", "Type", "Size", "Label", "ID", "Storage", "Access"],
                 [[r.object_class, r.key_type or "", r.size, r.label, r.id,
                   "token" if r.token else "session", "private" if r.private else "public"]
                  for r in records],
                 title=f"Objects on {slot_words(target)}"
                       f"{'' if logged_in else ' (public only: not logged in)'}:")


@click.command()
@slot_options
@json_option
def mechanisms(slot: str | None, group: str | None, as_json: bool) -> None:
    """Mechanisms of the slot, like pkcs11-tool -M: name, key sizes, flags."""
    from hacli.tokenops.mechanisms import mechanism_list

    with slot_session(slot, group) as (session, target):
        records = mechanism_list(session)
    if as_json:
        render.emit_json({**slot_json(target), "mechanisms": [r.as_dict() for r in records]})
        return
    render.echo(f"Supported mechanisms of {slot_words(target)}:")
    for r in records:
        render.echo(f"  {r.line()}")


@click.command()
@slot_options
@click.option("--type", "key_type", required=True, metavar="TYPE",
              help="rsa:BITS, ec:CURVE (prime256v1, secp384r1, secp521r1) or aes:128|192|256.")
@click.option("--label", required=True, help="CKA_LABEL of the key (both halves of a pair).")
@click.option("--id", "key_id", type=HexBytes(), help="CKA_ID (default: random).")
@pin_file_option
@json_option
def keygen(slot: str | None, group: str | None, key_type: str, label: str,
           key_id: bytes | None, pin_file: str | None, as_json: bool) -> None:
    """Generate a token key (pair) on the slot.

    Through the HA slot the engine makes it once and copies it to every
    member; through a member slot it is made on that member only.
    \b
    Example: hacli keygen --type rsa:2048 --label signer
    """
    from hacli.tokenops.keys import KeySpec, generate

    spec = KeySpec.parse(key_type)
    with slot_session(slot, group, pin_file, Login.ALWAYS) as (session, target):
        made = generate(session, spec, label, key_id=key_id)
    kinds = ["CKO_PUBLIC_KEY", "CKO_PRIVATE_KEY"] if spec.pair else ["CKO_SECRET_KEY"]
    if as_json:
        render.emit_json({**slot_json(target), "type": spec.text, "label": label,
                          "id": made.id.hex(), "objects": kinds})
        return
    what = "key pair" if spec.pair else "key"
    everywhere = ", on every member" if target.kind == "ha" else ""
    render.echo(f"Generated {spec.text} {what} {label!r} (ID {made.id.hex()}) on "
                f"{slot_words(target)}{everywhere}")


#: The JSON field of each operation's output (when it is not written to --out).
OUTPUT_FIELDS = {"sign": "signature", "encrypt": "ciphertext", "decrypt": "plaintext"}


def _crypto_command(operation: str, example: str, help_text: str) -> click.Command:
    """sign, encrypt, decrypt: one key, one input, one output."""

    def iv_option(f: F) -> F:
        if operation == "sign":  # no signing mechanism takes an IV
            return f
        return click.option("--iv", type=HexBytes(),
                            help="IV of AES-CBC and AES-CBC-PAD (16 bytes, hex).")(f)

    @click.command(operation, help=help_text)
    @slot_options
    @key_options
    @mechanism_option(example)
    @iv_option
    @io_options
    @pin_file_option
    @json_option
    def command(slot: str | None, group: str | None, label: str, key_id: bytes | None,
                mechanism: str, in_: str, out: str | None, pin_file: str | None,
                as_json: bool, iv: bytes | None = None) -> None:
        from hacli.tokenops import crypto

        mech, data = _prepare(operation, mechanism, iv, in_)
        check_out(out, as_json)
        login = Login.IF_GIVEN if operation == "encrypt" else Login.ALWAYS
        with slot_session(slot, group, pin_file, login) as (session, target):
            key = _key(session, label, operation, mech, key_id)
            if operation == "sign":
                result = crypto.sign(session, key, mech, data)
            elif operation == "encrypt":
                result = crypto.encrypt(session, key, mech, data, iv)
            else:
                result = crypto.decrypt(session, key, mech, data, iv)
        emit(result, out, as_json, {**slot_json(target), "key": label, "mechanism": mech.name,
                                    "bytes": len(result)}, OUTPUT_FIELDS[operation])

    return command


def _prepare(operation: str, mechanism: str, iv: bytes | None, in_: str) -> tuple[Mech, bytes]:
    """Everything checked before a token is touched: the mechanism, the IV, the input."""
    from hacli.tokenops import crypto
    from hacli.tokenops.mechanisms import find
    from hacli.tokenops.objects import operation_use

    mech = find(mechanism, operation_use(operation))
    crypto.check_iv(mech, iv)
    return mech, read_input(in_)


def _key(session: VirtualSession, label: str, operation: str, mech: Mech,
         key_id: bytes | None) -> int:
    from hacli.tokenops.objects import find_key

    return find_key(session, label, operation, mech, key_id)


sign = _crypto_command(
    "sign", "SHA256-RSA-PKCS, ECDSA-SHA256",
    "Sign --in with the private (or secret) key labelled --key.\n\n"
    "The signature goes to --out (or stdout); it is the named mechanism's, so "
    "openssl and pkcs11-tool verify it.")
encrypt = _crypto_command(
    "encrypt", "AES-CBC-PAD (with --iv), RSA-PKCS-OAEP",
    "Encrypt --in with the secret (or public) key labelled --key.\n\n"
    "The ciphertext goes to --out (or stdout); the IV is not written into it.")
decrypt = _crypto_command(
    "decrypt", "AES-CBC-PAD (with --iv), RSA-PKCS-OAEP",
    "Decrypt --in with the secret (or private) key labelled --key.")


@click.command()
@slot_options
@key_options
@mechanism_option("SHA256-RSA-PKCS, ECDSA-SHA256")
@click.option("--in", "in_", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, allow_dash=True),
              help="The signed data; '-' reads stdin.")
@click.option("--signature", required=True, metavar="FILE",
              type=click.Path(dir_okay=False, allow_dash=True),
              help="The signature; '-' reads stdin.")
@pin_file_option
@json_option
def verify(slot: str | None, group: str | None, label: str, key_id: bytes | None,
           mechanism: str, in_: str, signature: str, pin_file: str | None,
           as_json: bool) -> None:
    """Verify --signature of --in with the public (or secret) key labelled --key.

    Exit 0 when it is valid, 1 when it is not (one Error line). No PIN is
    needed for a public key; one is used when a source gives it.
    """
    from hacli.engine import CKR, CKRError
    from hacli.tokenops import crypto

    if in_ == STDIO and signature == STDIO:
        raise UsageError("--in and --signature cannot both be stdin")
    mech, data = _prepare("verify", mechanism, None, in_)
    sig = read_input(signature, "--signature")
    with slot_session(slot, group, pin_file, Login.IF_GIVEN) as (session, target):
        valid = crypto.verify(session, _key(session, label, "verify", mech, key_id), mech,
                              data, sig)
    if as_json:
        render.emit_json({**slot_json(target), "key": label, "mechanism": mech.name,
                          "valid": valid})
    elif valid:
        render.echo("Signature is valid.")
    if not valid:
        raise CKRError(CKR.SIGNATURE_INVALID, "C_Verify",
                       detail=f"the signature is not valid for this data and key {label!r}")


@click.command()
@slot_options
@click.option("--bytes", "nbytes", required=True, type=click.IntRange(1, 1 << 20),
              metavar="N", help="How many random bytes (1..1048576).")
@click.option("--out", metavar="FILE", help="Output file, written atomically (default: stdout).")
@click.option("--hex", "as_hex", is_flag=True, help="Print hex text instead of raw bytes.")
@json_option
def random(slot: str | None, group: str | None, nbytes: int, out: str | None, as_hex: bool,
           as_json: bool) -> None:
    """N random bytes from the slot's token (C_GenerateRandom)."""
    check_out(out, as_json)
    with slot_session(slot, group) as (session, target):
        data = session.generate_random(nbytes)
    if as_hex and out in (None, STDIO) and not as_json:
        render.echo(data.hex())
        return
    emit(data, out, as_json, {**slot_json(target), "bytes": len(data)}, "hex")


__all__ = ["decrypt", "encrypt", "keygen", "mechanisms", "objects", "random", "sign", "slots",
           "verify"]
