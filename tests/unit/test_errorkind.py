"""Free-text errors and wait reasons map to a few fixed label values (bounded cardinality)."""

from __future__ import annotations

import pytest

from zcrepl.core.errorkind import ERROR_KINDS, WAIT_KINDS, error_kind, wait_kind


@pytest.mark.parametrize(("message", "kind"), [
    ("hostB did not prepare to receive within 30s", "ready_timeout"),
    ("no report from hostA for 120s; the transfer is stalled (check that host's zc-agent log)", "stalled"),
    ("hostB went offline during the transfer (its stream closed)", "host_offline"),
    ("hostB re-registered (its agent restarted) during the transfer", "host_offline"),
    ("hostB:/srv/x: [Errno 28] No space left on device; free space there", "no_space"),
    ("hostB:/srv/x: [Errno 13] Permission denied; fix the owner", "permission"),
    ("protocol error from 10.0.0.2: header of 9000000 bytes is too large", "protocol"),
    ("hostA:/srv/x: connection reset by peer; the job retries", "network"),
    ("hostA:/srv/missing: no such directory; check the path", "not_found"),
    ("hostB:/srv/x <- hostA: not enough space for a file of 16,777,216 bytes (8,364,032 free, 0 of them kept "
     "free by free_margin_bytes); free some space or choose another destination", "no_space"),
    ("hostB:/srv/x <- hostA: the filesystem is full: at least 5,242,880 more bytes to write and 61,440 free",
     "no_space"),
    ("hostB:/srv/x <- hostA: nothing arrived for 60s (io_timeout); check the network between hostA and hostB",
     "timeout"),
    ("hostA stayed out of reach of the controller for 60s (attempt_grace) during the transfer", "host_offline"),
    ("hostA's agent came back without attempt 2 (it restarted): the attempt is lost", "host_offline"),
    ("cancelled by the operator", "cancelled"),
    ("something nobody foresaw", "other"),
])
def test_error_kinds(message: str, kind: str) -> None:
    assert error_kind(message) == kind


@pytest.mark.parametrize(("reason", "kind"), [
    ("retry 2 of 5 in 4.0s after: hostB went offline", "retry"),
    ("waiting: retry in 1.5s", "retry"),
    ("waiting: destination host hostB is offline (its zc-agent is not connected)", "host_offline"),
    ("waiting: hostA already runs 4 jobs (limit 4)", "host_jobs"),
    ("waiting: the link hostA→hostB already carries 2 streams (limit 2)", "streams"),
    ("waiting: hostA already uses 8 data streams (limit 8)", "streams"),
    ("waiting: hostA is already sending a copy for this fan-out", "fanout"),
    ("waiting: job 7 is writing to hostB:/srv/x", "overlap"),
    ("waiting: hostB has reported no health yet; its load is unknown", "health_unknown"),
    ("waiting: hostB has 1.0 GiB free on /srv, needs 2.0 GiB (1.0 GiB to move + 1.0 GiB margin)", "disk_space"),
    # Several blockers: the first one named wins, whatever the table order.
    ("waiting: hostA load 3.1 per core (limit 1.5); hostB CPU 93% busy (limit 85%)", "load"),
    ("waiting: hostB disk 97% busy (sda, limit 90%)", "disk_busy"),
    ("waiting: hostB network 90% used receiving (eth0 1000 Mb/s, limit 85%)", "network"),
    ("waiting: something new", "other"),
])
def test_wait_kinds(reason: str, kind: str) -> None:
    assert wait_kind(reason) == kind


def test_kinds_are_few_and_distinct() -> None:
    for kinds in (ERROR_KINDS, WAIT_KINDS):
        assert len(set(kinds)) == len(kinds) <= 16 and kinds[-1] == "other"
