"""``--log-format json`` (issue 14, item 6): a whole short session (a job that skips an entry, a job that fails,
a watch rule shipping a change, and shutdown) on a controller and two agents, and every line each daemon wrote
(stdout and stderr, gRPC's and Python's own included) parses as one JSON object, with the job, attempt, host and
rule ids as fields wherever they apply."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zchelpers import Cluster, wait_for, write_file

JSON = ("--log-format", "json")


def parse(path: Path) -> list[dict[str, Any]]:
    docs = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name} line {n} is not JSON: {line[:300]!r}") from None
        assert isinstance(doc, dict) and {"ts", "level", "logger", "msg"} <= set(doc), (path.name, n, line[:300])
        docs.append(doc)
    return docs


def test_every_line_of_a_session_is_json_with_its_ids(tmp_path: Path) -> None:
    c = Cluster(tmp_path, log_format="json")
    try:
        c.controller.start()
        c.add_agent("hostA", tmp_path / "a", flags=JSON).start()
        c.add_agent("hostB", tmp_path / "b", flags=JSON).start()
        c.wait_online("hostA", "hostB")

        src = tmp_path / "a" / "src"
        src.mkdir()
        for i in range(20):
            write_file(src / f"f{i}", b"x" * i)
        os.mkfifo(src / "fifo")  # logged by the scan, deep in the sender's thread
        rc, _, err = c.ctl("replicate", f"hostA:{src}", f"hostB:{tmp_path / 'b' / 'dst'}")
        assert rc == 4, err

        # A job that fails: its destination's parent is a file.
        write_file(tmp_path / "b" / "a-file", b"not a directory")
        bad = tmp_path / "b" / "a-file" / "x"
        rc, _, err = c.ctl("replicate", "--max-attempts", "1", f"hostA:{src}", f"hostB:{bad}")
        assert rc == 1, err

        # A watch rule ships a change.
        w = tmp_path / "a" / "w"
        w.mkdir()
        rc, out, err = c.ctl("replicate", "--watch", f"hostA:{w}", f"hostB:{tmp_path / 'b' / 'w'}", "--json")
        assert rc == 0, err
        rule = json.loads(out)["id"]
        write_file(w / "new", b"shipped by the rule")
        wait_for(lambda: (tmp_path / "b" / "w" / "new").exists(), 20, interval=0.1, what="the change shipped")
        assert c.ctl("syncs", "remove", str(rule))[0] == 0
    finally:
        c.close()  # SIGTERM: the shutdown lines are read too

    logs = {name: parse(tmp_path / f"{name}.log") for name in ("controller", "hostA", "hostB")}
    for name, docs in logs.items():
        assert len(docs) > 10, name
        assert {d["level"] for d in docs} <= {"debug", "info", "warning", "error", "critical"}
        service = "zc-controller" if name == "controller" else "zc-agent"
        assert all(d.get("service") == service for d in docs), name

    # Every agent line is its host's; every line about a job carries the job, its attempt and the host.
    for name in ("hostA", "hostB"):
        assert {d["host"] for d in logs[name]} == {name}
        job_lines = [d for d in logs[name] if "job" in d]
        assert len(job_lines) >= 4, name
        for d in job_lines:
            assert isinstance(d["job"], int) and isinstance(d["attempt"], int) and d["attempt"] >= 1, d
    ctl_jobs = [d for d in logs["controller"] if "job" in d]
    assert {d["job"] for d in ctl_jobs} >= {1, 2}
    for d in ctl_jobs:
        assert isinstance(d["attempt"], int) and d["host"] in ("hostA", "hostB"), d

    skipped = next(d for d in logs["hostA"] if d["msg"] == "skipped")
    assert (skipped["job"], skipped["attempt"], skipped["path"]) == (1, 1, "fifo")
    assert skipped["logger"] == "zcrepl.agent.transfer.scan"

    msgs = {(d["logger"], d["msg"], d.get("job")) for d in logs["controller"]}
    assert ("zcrepl.controller.engine", "job done", 1) in msgs
    assert ("zcrepl.controller.engine", "attempt failed", 2) in msgs
    failed = next(d for d in logs["controller"] if d["msg"] == "attempt failed")
    assert failed["attempt"] == 1 and failed["host"] == "hostB" and "a-file" in failed["error"]

    # The watch rule's lines name it, on both agents and on the controller.
    for name in ("controller", "hostA", "hostB"):
        assert any(d.get("rule") == rule for d in logs[name]), name
    assert all(d.get("rule") == rule for d in logs["hostA"] if d["logger"].startswith("zcrepl.agent.watchrule"))
    assert os.path.exists(tmp_path / "b" / "w" / "new")
