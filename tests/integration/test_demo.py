"""The README's first command: `zc-ctl demo` starts a controller and two agents and replicates a tree."""

from __future__ import annotations

import subprocess
import sys


def test_the_demo_replicates_and_checks_its_copy() -> None:
    p = subprocess.run([sys.executable, "-m", "zcrepl.controller.ctl", "demo", "--files", "100", "--big-mib", "2"],
                       capture_output=True, timeout=120)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, p.stderr.decode(errors="replace")[-2000:]
    assert "trees identical" in out and '"errors": 0' in out
    assert "web view: https://127.0.0.1:" in out
