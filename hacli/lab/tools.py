"""Finding the lab's external pieces: SoftHSM2 and the lab's own p11-kit build.

p11-kit
    The lab runs **its own p11-kit build** (0.25.5 with hacli's AES key-wrap RPC
    patch, made by ``packaging/p11-kit/build.sh PREFIX``; ``make install`` runs
    it), never the system's: Debian 12's 0.24.1 cannot forward AES key wrap or
    any mechanism with an IV, and a client and a server of different builds do
    not understand each other.  The build is looked up as a *prefix*, the first
    of these that is set or exists:

    1. ``$HACLI_P11KIT_PREFIX`` -- when set, it is the only place looked at;
    2. the checkout's prefix, ``<checkout>/.venv/p11-kit``, where ``<checkout>``
       is the directory holding ``pyproject.toml`` and this ``hacli`` package
       (an editable install, as ``make install`` makes);
    3. the prefix next to the installed package, ``sys.prefix/p11-kit``.

    A prefix has the build when it holds ``bin/p11-kit`` and
    ``lib/pkcs11/p11-kit-client.so``; its version is read from
    ``lib/pkgconfig/p11-kit-1.pc``.  No build anywhere is one clear
    :class:`LabError` saying how to make one.

SoftHSM2
    The system's ``libsofthsm2.so``: ``$HACLI_SOFTHSM2_MODULE``, then a list of
    known locations, then the package manager's file list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hacli.errors import LabError

_MULTIARCH = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"

SOFTHSM2_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    f"/usr/lib/{_MULTIARCH}/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)

#: Environment variables that override the search.
ENV_SOFTHSM2 = "HACLI_SOFTHSM2_MODULE"
ENV_P11KIT_PREFIX = "HACLI_P11KIT_PREFIX"

#: Where a prefix holds each piece of the build.
P11KIT_COMMAND = "bin/p11-kit"
P11KIT_CLIENT = "lib/pkcs11/p11-kit-client.so"
P11KIT_PC = "lib/pkgconfig/p11-kit-1.pc"


@dataclass(frozen=True)
class LabTools:
    """Absolute paths of what the lab runs."""

    #: SoftHSM2's PKCS#11 module, loaded by each member's server.
    softhsm2: str
    #: The build's ``p11-kit`` command (``p11-kit server`` serves a module on a socket).
    p11kit: str
    #: The build's client module: a PKCS#11 module that forwards to a server.
    p11kit_client: str
    #: The prefix the p11-kit build was found in.
    p11kit_prefix: str = ""
    #: Its version, from ``lib/pkgconfig/p11-kit-1.pc`` (``"unknown"`` without one).
    p11kit_version: str = "unknown"


def _dpkg_find(packages: tuple[str, ...], basename: str) -> str | None:
    """A file named *basename* in the listed Debian packages, if dpkg knows one."""
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return None
    try:
        out = subprocess.run(
            [dpkg, "-L", *packages], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.endswith("/" + basename) and os.path.isfile(line):
            return line
    return None


def _find_softhsm2() -> str:
    override = os.environ.get(ENV_SOFTHSM2)
    if override:
        if os.path.isfile(override):
            return override
        raise LabError(f"{ENV_SOFTHSM2}={override} is not a file")
    for path in SOFTHSM2_CANDIDATES:
        if os.path.isfile(path):
            return path
    found = _dpkg_find(("softhsm2", "libsofthsm2"), "libsofthsm2.so")
    if found:
        return found
    raise LabError(
        f"SoftHSM2 (libsofthsm2.so) not found (looked in {', '.join(SOFTHSM2_CANDIDATES)}); "
        f"install the Debian package softhsm2 or set {ENV_SOFTHSM2}"
    )


def checkout_dir() -> Path | None:
    """The source checkout this ``hacli`` package runs from, if it runs from one.

    That is the parent of the package directory when it holds ``pyproject.toml``
    (an editable install or a run from the source tree); None for an installed
    package.
    """
    root = Path(__file__).resolve().parent.parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def p11kit_prefixes() -> list[tuple[str, Path]]:
    """Where the lab looks for its p11-kit build, in order: ``(where, prefix)`` pairs.

    ``$HACLI_P11KIT_PREFIX`` alone when it is set; otherwise the checkout's
    ``.venv/p11-kit`` (if this package runs from a checkout), then
    ``sys.prefix/p11-kit``.
    """
    override = os.environ.get(ENV_P11KIT_PREFIX)
    if override:
        return [(f"${ENV_P11KIT_PREFIX}", Path(override).expanduser().absolute())]
    found: list[tuple[str, Path]] = []
    checkout = checkout_dir()
    if checkout is not None:
        found.append(("the checkout", checkout / ".venv" / "p11-kit"))
    installed = Path(sys.prefix) / "p11-kit"
    if all(installed != p for _, p in found):
        found.append(("sys.prefix", installed))
    return found


def has_p11kit_build(prefix: Path) -> bool:
    """True when *prefix* holds a p11-kit build the lab can run."""
    command = prefix / P11KIT_COMMAND
    return (
        command.is_file()
        and os.access(command, os.X_OK)
        and (prefix / P11KIT_CLIENT).is_file()
    )


def p11kit_version(prefix: Path) -> str:
    """The build's version from its pkg-config file, or ``"unknown"``."""
    try:
        text = (prefix / P11KIT_PC).read_text(errors="replace")
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "Version" and value.strip():
            return value.strip()
    return "unknown"


def _find_p11kit_prefix() -> Path:
    candidates = p11kit_prefixes()
    for _, prefix in candidates:
        if has_p11kit_build(prefix):
            return prefix
    looked = ", ".join(f"{p} ({where})" for where, p in candidates)
    raise LabError(
        f"the lab's p11-kit build was not found (looked in {looked}; it needs "
        f"{P11KIT_COMMAND} and {P11KIT_CLIENT}); run `make install`, or "
        f"`packaging/p11-kit/build.sh PREFIX` and set {ENV_P11KIT_PREFIX}=PREFIX"
    )


@cache
def find_tools() -> LabTools:
    """Locate SoftHSM2 and the lab's p11-kit build (see the module docstring), or raise."""
    softhsm2 = _find_softhsm2()
    prefix = _find_p11kit_prefix()
    return LabTools(
        softhsm2=softhsm2,
        p11kit=str(prefix / P11KIT_COMMAND),
        p11kit_client=str(prefix / P11KIT_CLIENT),
        p11kit_prefix=str(prefix),
        p11kit_version=p11kit_version(prefix),
    )
