"""Bad operator input: a clear one-sentence error, a non-zero exit, and nothing changed anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zchelpers import Cluster, make_tree, snapshot


def test_unknown_host_missing_path_and_outside_export(cluster: Cluster, tmp_path: Path) -> None:
    src = tmp_path / "a" / "src"
    make_tree(src, files=20)
    (tmp_path / "b" / "keep").mkdir(parents=True)
    before = snapshot(tmp_path)

    rc, out, err = cluster.ctl("replicate", f"hostX:{src}", f"hostB:{tmp_path}/b/d")
    assert rc == 2
    assert "unknown host 'hostX'" in err and "zc-ctl agents" in err

    rc, out, err = cluster.ctl("replicate", f"hostA:{tmp_path}/a/missing", f"hostB:{tmp_path}/b/d")
    assert rc == 1
    assert f"hostA:{tmp_path}/a/missing does not exist" in err

    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", "hostB:/etc/zc-test")
    assert rc == 1
    assert "hostB:/etc/zc-test is outside the exports of hostB" in err

    rc, out, err = cluster.ctl("replicate", "hostA:/etc", f"hostB:{tmp_path}/b/d")
    assert rc == 1
    assert "hostA:/etc is outside the exports of hostA" in err

    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path}/b/../d")
    assert rc == 2 and "canonical" in err

    rc, out, err = cluster.ctl("replicate", f"hostA:{src}", f"hostA:{src}/inside")
    assert rc == 2 and "overlap" in err

    after = snapshot(tmp_path)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # Only the controller's state and the daemons' logs and ready files may change.
    assert all(k.startswith(b"state") or k.endswith((b".log", b".json")) for k in changed), changed

    # Failed jobs say why, and were not retried: the cause is permanent.
    rc, out, _ = cluster.ctl("jobs", "--json")
    jobs = json.loads(out)
    assert [j["state"] for j in jobs] == ["failed"] * 3
    assert all(j["attempts"] == 1 and j["error"] for j in jobs)


def test_unreachable_controller_exits_3(tmp_path: Path) -> None:
    import subprocess
    import sys

    from zchelpers import ClusterPKI

    env = {**os.environ, **ClusterPKI(tmp_path).env()}
    p = subprocess.run([sys.executable, "-m", "zcrepl.cli.ctl", "--controller", "127.0.0.1:1", "agents"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 3
    assert "cannot reach the controller at 127.0.0.1:1" in p.stderr
