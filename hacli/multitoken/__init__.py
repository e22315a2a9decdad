"""multitoken: a load generator after Luna's multitoken tool.

N threads run one operation (RSA-2048 sign, EC P-256 sign, AES-256-CBC on
4 KiB blocks, 256-byte random) for S seconds through an HA group or directly
through one member, check every answer they can, and report throughput,
errors, latency percentiles and the calls each member served.

No click or rich here: :mod:`hacli.cli.multitoken` renders the result.
"""

from hacli.multitoken.modes import MODES
from hacli.multitoken.runner import Result, run

__all__ = ["MODES", "Result", "run"]
