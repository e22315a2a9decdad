"""Finding the lab's external pieces: SoftHSM2, ``p11-kit`` and p11-kit's client module.

Debian puts them at fixed paths, other distributions elsewhere; each is looked
up in an environment override, a list of known locations, then the package
manager's file list.  A missing piece is one clear :class:`LabError` naming the
package to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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

P11KIT_CLIENT_CANDIDATES = (
    f"/usr/lib/{_MULTIARCH}/pkcs11/p11-kit-client.so",
    "/usr/lib64/pkcs11/p11-kit-client.so",
    "/usr/lib/pkcs11/p11-kit-client.so",
    "/usr/local/lib/pkcs11/p11-kit-client.so",
)

#: Environment variables that override the search (for non-Debian layouts).
ENV_SOFTHSM2 = "HACLI_SOFTHSM2_MODULE"
ENV_P11KIT_CLIENT = "HACLI_P11KIT_CLIENT_MODULE"
ENV_P11KIT = "HACLI_P11KIT"


@dataclass(frozen=True)
class LabTools:
    """Absolute paths of what the lab runs."""

    #: SoftHSM2's PKCS#11 module, loaded by each member's server.
    softhsm2: str
    #: The ``p11-kit`` command (``p11-kit server`` serves a module on a socket).
    p11kit: str
    #: p11-kit's client module: a PKCS#11 module that forwards to a server.
    p11kit_client: str


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


def _find_file(
    what: str, env: str, candidates: tuple[str, ...], packages: tuple[str, ...], basename: str
) -> str:
    override = os.environ.get(env)
    if override:
        if os.path.isfile(override):
            return override
        raise LabError(f"{env}={override} is not a file")
    for path in candidates:
        if os.path.isfile(path):
            return path
    found = _dpkg_find(packages, basename)
    if found:
        return found
    raise LabError(
        f"{what} not found (looked in {', '.join(candidates)}); "
        f"install the Debian package {packages[0]} or set {env}"
    )


@cache
def find_tools() -> LabTools:
    """Locate SoftHSM2, ``p11-kit`` and ``p11-kit-client.so``, or raise LabError."""
    softhsm2 = _find_file(
        "SoftHSM2 (libsofthsm2.so)",
        ENV_SOFTHSM2,
        SOFTHSM2_CANDIDATES,
        ("softhsm2", "libsofthsm2"),
        "libsofthsm2.so",
    )
    client = _find_file(
        "p11-kit's client module (p11-kit-client.so)",
        ENV_P11KIT_CLIENT,
        P11KIT_CLIENT_CANDIDATES,
        ("p11-kit-modules", "p11-kit"),
        "p11-kit-client.so",
    )
    p11kit = os.environ.get(ENV_P11KIT) or shutil.which("p11-kit") or "/usr/bin/p11-kit"
    if not (os.path.isfile(p11kit) and os.access(p11kit, os.X_OK)):
        raise LabError("the p11-kit command was not found; install the Debian package p11-kit")
    return LabTools(softhsm2=softhsm2, p11kit=str(Path(p11kit)), p11kit_client=client)
