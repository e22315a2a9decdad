"""The members' tokens as PKCS#11 sees them: initialise them, list what a client sees.

Both run :mod:`hacli.lab.probe` in a child Python, so this process never
loads SoftHSM2 or a p11-kit client module with the lab's environment (the
probe's docstring says why that matters).  The child gets a clean
environment (:func:`clean_env`): no PIN variable of the caller reaches it;
the PINs it needs travel on its stdin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hacli.errors import LabError
from hacli.lab import probe
from hacli.lab.model import LabMember
from hacli.lab.tools import find_tools

#: What the lab's child processes (servers, probes) keep of the caller's
#: environment; everything else, any ``HACLI_*PIN*`` above all, is left out.
KEPT_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "P11_KIT_DEBUG")

#: Mechanisms every member must list through the lab's client module: the
#: transport-key wrap (replication of sensitive keys) and an IV mechanism.
#: Debian 12's p11-kit 0.24.1 client drops both.
REQUIRED_MECHANISMS = {"CKM_AES_KEY_WRAP_PAD": 0x210A, "CKM_AES_CBC_PAD": 0x1085}


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A child's environment: :data:`KEPT_ENV` and ``LC_*`` from ours, plus *extra*.

    Nothing named like a PIN is ever kept, whatever :data:`KEPT_ENV` says.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if (k in KEPT_ENV or k.startswith("LC_")) and "PIN" not in k.upper()
    }
    env.update(extra or {})
    return env


#: A return value as the probe writes it (and ckr_name writes an unknown one).
_NUMBERED_CODE = re.compile(r"\bCKR_0x([0-9A-F]{8})\b")


def name_codes(text: str) -> str:
    """*text* with the probe's numbered return values (``CKR_0x000000A0``) named
    from the engine's table (``CKR_PIN_INCORRECT``); unknown ones stay numbers."""
    if _NUMBERED_CODE.search(text) is None:
        return text
    from hacli.engine.ckr import ckr_name  # imported only when there is a code to name

    return _NUMBERED_CODE.sub(lambda m: ckr_name(int(m.group(1), 16)), text)


def run_probe(request: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run :mod:`hacli.lab.probe` in a child Python; its answer, or LabError."""
    # -I: the probe needs only the standard library; ignore PYTHONPATH and co.
    cmd = [sys.executable, "-I", probe.__file__]
    try:
        proc = subprocess.run(
            cmd,
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"a PKCS#11 check of the lab did not answer within {timeout:g} s") from None
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise LabError(f"PKCS#11 check of the lab failed: {last}") from None
    if "error" in answer:
        raise LabError(f"PKCS#11 check of the lab failed: {name_codes(answer['error'])}")
    return answer


def init_tokens(
    softhsm2: str,
    labels: list[str],
    pin: str,
    so_pin: str,
    envs: list[dict[str, str]],
    timeout: float,
) -> list[dict[str, str]]:
    """Initialise one SoftHSM2 token per label; ``{"label", "serial"}`` of each, in order.

    Token *i* is made by a probe child with environment ``envs[i]`` (its
    ``SOFTHSM2_CONF`` names that member's own token directory); the children
    run at once.  The PINs go to each child on its stdin, never on a command line.
    """

    def one(label: str, env: dict[str, str]) -> dict[str, str]:
        request = {
            "op": "init",
            "library": softhsm2,
            "labels": [label],
            "pin": pin,
            "so_pin": so_pin,
        }
        return run_probe(request, env, timeout)["tokens"][0]

    with ThreadPoolExecutor(max_workers=max(1, len(labels))) as pool:
        futures = [pool.submit(one, lb, env) for lb, env in zip(labels, envs, strict=True)]
        return [f.result() for f in futures]


def read_tokens(softhsm2: str, softhsm2_conf: Path, timeout: float) -> list[dict[str, str]]:
    """The initialised tokens (``{"label", "serial"}``) SoftHSM2 finds with *softhsm2_conf*.

    Opened directly through *softhsm2*, in a probe child: how ``up`` tells
    which member a token directory of an older lab belongs to.
    """
    request = {
        "op": "list",
        "modules": [{"library": softhsm2, "env": {"SOFTHSM2_CONF": str(softhsm2_conf)}}],
    }
    return run_probe(request, clean_env(), timeout)["results"][0]


def list_tokens(
    members: list[LabMember],
    timeout: float,
    client: str | None = None,
    mechanisms: list[int] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per member, the tokens (``{"label", "serial"}``) a client of its socket sees.

    *client* is the client module to load (default: the lab's build).  With
    *mechanisms*, each token also has ``"missing"``: those of them its
    mechanism list (as *client* forwards it) lacks.
    """
    library = client or find_tools().p11kit_client
    request: dict[str, Any] = {
        "op": "list",
        "modules": [{"library": library, "env": m.env} for m in members],
    }
    if mechanisms is not None:
        request["mechanisms"] = mechanisms
    # No SOFTHSM2_CONF: the client reaches SoftHSM2 only through the servers.
    return run_probe(request, clean_env(), timeout)["results"]
