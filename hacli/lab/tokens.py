"""The members' tokens as PKCS#11 sees them: initialise them, list what a client sees.

Both run :mod:`hacli.lab.probe` in a child Python, so this process never
loads SoftHSM2 or a p11-kit client module with the lab's environment (the
probe's docstring says why that matters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from hacli.errors import LabError
from hacli.lab import probe
from hacli.lab.model import LabMember
from hacli.lab.tools import find_tools


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
        raise LabError(f"PKCS#11 check of the lab failed: {answer['error']}")
    return answer


def init_tokens(
    softhsm2: str, labels: list[str], pin: str, so_pin: str, env: dict[str, str], timeout: float
) -> list[dict[str, str]]:
    """Initialise one free SoftHSM2 token per label; ``{"label", "serial"}`` of each, in order.

    The PINs go to the child on its stdin, never on a command line.
    """
    request = {"op": "init", "library": softhsm2, "labels": labels, "pin": pin, "so_pin": so_pin}
    return run_probe(request, env, timeout)["tokens"]


def list_tokens(members: list[LabMember], timeout: float) -> list[list[dict[str, str]]]:
    """Per member, the tokens (``{"label", "serial"}``) a client of its socket sees."""
    client = find_tools().p11kit_client
    request = {"op": "list", "modules": [{"library": client, "env": m.env} for m in members]}
    # The client reaches SoftHSM2 only through the servers, never directly.
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    return run_probe(request, env, timeout)["results"]
