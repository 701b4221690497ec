"""Both daemons' /metrics scraped during a real job: the figures follow the job, and promtool finds no problem."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from zchelpers import Cluster, wait_for, write_file

from zcrepl.core.types import Endpoint, JobOptions, JobState

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SIZE = 12 << 20
RATE = 4 << 20  # bytes/s: the job runs for about three seconds, long enough to be seen running


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install prometheus); "
                    ".ci/run does it on CI")
    return path


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def check(text: str) -> None:
    """``promtool check metrics`` reports nothing at all: no lint problem, no parse error."""
    p = subprocess.run([promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    report = (p.stdout + p.stderr).decode().strip()
    assert p.returncode == 0 and not report, report


def value(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels} in the scrape")


def exported(texts: list[str]) -> set[str]:
    """Every family and sample name in the scrapes (a family with no sample yet still has its TYPE line)."""
    names = {m.group(1) for t in texts for m in re.finditer(r"^# TYPE (\S+) ", t, re.M)}
    return names | {s.name for t in texts for f in text_string_to_metric_families(t) for s in f.samples}


def named(expr: str) -> set[str]:
    return set(re.findall(r"\bzcrepl_[a-z0-9_]+", expr))


@pytest.fixture
def metered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """The conftest's cluster, with every daemon serving metrics on a free loopback port (set through ZC_*)."""
    monkeypatch.setenv("ZC_METRICS_LISTEN", "127.0.0.1:0")
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        for name, export in (("hostA", "a"), ("hostB", "b")):
            c.add_agent(name, tmp_path / export).start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()


def test_metrics_follow_a_real_job_and_pass_promtool(metered: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "src", tmp_path / "b" / "dst"
    src.mkdir()
    write_file(src / "big", b"z" * SIZE)
    for i in range(9):
        write_file(src / f"small{i}", b"s" * 100)
    addr = {n: d.ready["metrics"] for n, d in metered.daemons.items()}

    with metered.client() as c:
        job = c.submit(Endpoint("hostA", str(src).encode()), Endpoint("hostB", str(dst).encode()),
                       JobOptions(bwlimit=RATE))
        wait_for(lambda: c.job(job.id).progress.bytes_done > 0, what="the job to move bytes")
        during = {n: scrape(a) for n, a in addr.items()}
        assert c.job(job.id).state is JobState.RUNNING, "the job ended before the scrape; slow it down further"
        wait_for(lambda: c.job(job.id).state.final, timeout=60, what="the job to finish")
        assert c.job(job.id).state is JobState.DONE

    ctl, a, b = during["controller"], during["hostA"], during["hostB"]
    assert value(ctl, "zcrepl_controller_jobs", state="running") == 1
    assert value(ctl, "zcrepl_controller_agents", state="online") == 2
    assert value(ctl, "zcrepl_controller_agent_up", host="hostB") == 1
    assert value(ctl, "zcrepl_controller_attempts_total", source="hostA", destination="hostB") == 1
    assert value(ctl, "zcrepl_controller_link_streams", source="hostA", destination="hostB") >= 1
    assert value(a, "zcrepl_agent_active_transfers") == 1 and value(b, "zcrepl_agent_active_transfers") == 1
    assert value(b, "zcrepl_agent_data_connections", state="admitted") >= 2  # control + at least one stream
    assert 0 < value(a, "zcrepl_agent_transferred_bytes_total", direction="sent") < SIZE
    assert value(b, "zcrepl_agent_export_free_bytes", export="0") > 0
    assert value(a, "zcrepl_agent_memory_total_bytes") > 0

    after = {n: scrape(a) for n, a in addr.items()}
    ctl, a, b = after["controller"], after["hostA"], after["hostB"]
    moved = SIZE + 9 * 100
    assert value(ctl, "zcrepl_controller_jobs", state="done") == 1
    assert value(ctl, "zcrepl_controller_link_transferred_bytes_total", source="hostA", destination="hostB") == moved
    assert value(ctl, "zcrepl_controller_link_transferred_files_total", source="hostA", destination="hostB") == 10
    assert value(ctl, "zcrepl_controller_job_duration_seconds_count", state="done") == 1
    assert value(ctl, "zcrepl_controller_job_duration_seconds_sum", state="done") >= SIZE / RATE / 2
    assert value(ctl, "zcrepl_controller_scheduling_pass_seconds_count") > 0
    assert value(ctl, "zcrepl_controller_store_call_seconds_count", call="end_attempt") == 1
    assert value(b, "zcrepl_agent_transferred_bytes_total", direction="received") == moved
    assert value(b, "zcrepl_agent_transferred_files_total", direction="received") == 10
    assert value(a, "zcrepl_agent_transferred_bytes_total", direction="sent") == moved
    assert value(a, "zcrepl_agent_active_transfers") == 0

    have = exported([*during.values(), *after.values()])
    dashboard = json.loads((DEPLOY / "grafana" / "zcrepl.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += re.findall(r"^\s+expr: (.+)$", (DEPLOY / "prometheus" / "alerts.yml").read_text(), re.M)
    assert len(exprs) > 30 and all(named(e) for e in exprs if "up{" not in e)
    missing = {n for e in exprs for n in named(e)} - have
    assert not missing, f"the dashboard or the alerts name metrics no daemon exports: {sorted(missing)}"

    for text in (*during.values(), *after.values()):
        check(text)
        assert str(src) not in text and str(dst) not in text and "small0" not in text  # no paths, no names


def test_failures_are_counted_by_cause(metered: Cluster, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(exist_ok=True)
    address = metered.controller.ready["metrics"]
    with metered.client() as c:
        job = c.submit(Endpoint("hostA", str(tmp_path / "a" / "missing").encode()),
                       Endpoint("hostB", str(tmp_path / "b" / "d").encode()), JobOptions(max_attempts=1))
        wait_for(lambda: c.job(job.id).state.final, what="the job to fail")
        error = c.job(job.id).error
    text = scrape(address)
    check(text)
    assert value(text, "zcrepl_controller_jobs", state="failed") == 1
    assert value(text, "zcrepl_controller_job_duration_seconds_count", state="failed") == 1
    causes = {s.labels["cause"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name == "zcrepl_controller_attempt_failures_total"}
    assert sum(causes.values()) == 1 and causes["not_found"] == 1, (error, causes)
    b = scrape(metered.daemons["hostA"].ready["metrics"])
    assert value(b, "zcrepl_agent_transfer_errors_total", kind="not_found") == 1


def test_watch_rules_are_measured_on_both_ends(metered: Cluster, tmp_path: Path) -> None:
    src, dst = tmp_path / "a" / "w", tmp_path / "b" / "w"
    src.mkdir()
    ctl_addr, a_addr = metered.controller.ready["metrics"], metered.daemons["hostA"].ready["metrics"]
    with metered.client() as c:
        rule = c.create_watch_rule(Endpoint("hostA", str(src).encode()), [Endpoint("hostB", str(dst).encode())],
                             JobOptions())
        key = {"rule": str(rule.id), "source": "hostA"}
        wait_for(lambda: dst.is_dir(), what="the rule's first scan")
        for i in range(5):
            write_file(src / f"f{i}", b"w" * 1000)
        wait_for(lambda: all((dst / f"f{i}").exists() for i in range(5)), what="the changes to arrive")
        # The controller learns the rule's counters from the source's heartbeats.
        ctl = wait_for(lambda: (t := scrape(ctl_addr)) and value(
            t, "zcrepl_controller_watch_rule_transferred_bytes_total", **key) >= 5000 and t, what="the rule's bytes")
        a = scrape(a_addr)
        assert value(ctl, "zcrepl_controller_watch_rule_active", **key) == 1
        assert value(ctl, "zcrepl_controller_watch_rule_pending_changes", **key) == 0
        assert value(ctl, "zcrepl_controller_watch_rule_errors_total", **key) == 0
        assert value(a, "zcrepl_agent_watch_rules") == 1
        assert value(a, "zcrepl_agent_watch_events_total") >= 5
        assert value(a, "zcrepl_agent_watch_change_sets_total") >= 1
        assert value(a, "zcrepl_agent_watch_transferred_bytes_total") >= 5000
        c.watch_rule_action("pause", rule.id)
        paused = scrape(ctl_addr)
    assert value(paused, "zcrepl_controller_watch_rule_active", **key) == 0
    for text in (ctl, a, paused):
        check(text)
        assert str(src) not in text and "f0" not in text


def test_metrics_port_is_off_unless_set(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        assert "metrics" not in c.controller.ready
        assert "metrics=-" in c.controller.log()
    finally:
        c.close()
