"""Start-up stays light, and the generated completions and man page are fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(args: list[str]) -> set[str]:
    code = (
        "import sys\nfrom hacli.cli.main import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          check=False)
    return set(proc.stderr.split())


def test_help_imports_neither_pkcs11_nor_rich() -> None:
    mods = _modules_after(["--help"])
    assert "click" in mods  # the probe itself works
    assert not {m for m in mods if m.startswith(("pkcs11", "rich", "configobj"))}


def test_retry_imports_no_pkcs11_or_rich(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("Misc = {\n}\n")
    mods = _modules_after(["--conf", str(conf), "hagroup", "retry", "--count", "3"])
    assert "hacli.conf.haedit" in mods
    assert not {m for m in mods if m.startswith(("pkcs11", "rich"))}


def test_completions_and_man_page_are_fresh() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_completions.py"),
                           "--check"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("completions/hacli.bash", "completions/_hacli", "completions/hacli.fish",
                 "man/hacli.1"):
        assert (ROOT / name).stat().st_size > 200
