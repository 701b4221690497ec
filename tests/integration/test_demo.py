"""The README's first command: `zc-ctl demo` starts a controller and two agents and replicates a tree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def test_the_demo_replicates_and_checks_its_copy() -> None:
    # A session of its own: if the demo does not finish in time, its daemons go with it (a timeout alone
    # would SIGKILL zc-ctl and leave the controller and agents running).
    p = subprocess.Popen([sys.executable, "-m", "zcrepl.cli.ctl", "demo", "--files", "100", "--big-mib", "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            stdout, stderr = p.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            stdout, stderr = p.communicate()
        tail = stdout.decode(errors="replace")[-2000:] + stderr.decode(errors="replace")[-2000:]
        raise AssertionError(f"the demo did not finish within 120 s:\n{tail}") from None
    out = stdout.decode(errors="replace")
    assert p.returncode == 0, stderr.decode(errors="replace")[-2000:]
    assert "trees identical" in out and '"errors": 0' in out
    assert "web view: https://127.0.0.1:" in out
