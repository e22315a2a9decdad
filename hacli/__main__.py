"""``python -m hacli``."""

from hacli.cli.main import main

main()
