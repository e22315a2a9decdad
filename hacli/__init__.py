"""hacli: a lunacm / CKDemo-style tool for PKCS#11 high-availability groups.

Layers, each a package with one job:

- :mod:`hacli.conf`   lossless Chrystoki.conf / crystoki.ini documents, the typed HA model
- :mod:`hacli.engine` the embedded HA engine (virtual slot over real PKCS#11 members)
- :mod:`hacli.lab`    member HSMs as separate processes (SoftHSM2 behind p11-kit server)
- :mod:`hacli.cli`    click commands and the CKDemo-style menu
"""

__version__ = "0.1.0"
