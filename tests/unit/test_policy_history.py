"""Tests for zcrepl.controller.policy's decision records: the explain vocabulary and when a decision repeats."""

from __future__ import annotations

import pytest
from policyhelpers import NOW

from zcrepl.controller.policy import DecisionKind, DecisionRecord
from zcrepl.controller.throttle import Throttle

# -- decision history ------------------------------------------------------------------------------


def test_decision_kinds_are_the_explain_vocabulary() -> None:
    assert [k.value for k in DecisionKind] == ["wait", "start", "slow", "pause", "resume", "switch_source",
                                             "streams", "fail", "done", "cancel", "schedule"]
    assert [a.kind for a in Throttle] == [None, DecisionKind.SLOW, DecisionKind.PAUSE, DecisionKind.RESUME]


@pytest.mark.parametrize(
    ("last", "expected"),
    [
        (None, False),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 93% busy"), True),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 95.5% busy"), True),  # figures only
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host1 CPU 93% busy"), False),
        (DecisionRecord(1, NOW - 5, DecisionKind.WAIT, "waiting: host2 disk 93% busy"), False),
        (DecisionRecord(1, NOW - 5, DecisionKind.START, "waiting: host1 disk 93% busy"), False),
        (DecisionRecord(2, NOW - 5, DecisionKind.WAIT, "waiting: host1 disk 93% busy"), False),
    ],
    ids=["first", "same", "new-figure", "new-blocker", "other-host", "new-kind", "other-job"],
)
def test_decision_record_repeats(last: DecisionRecord | None, expected: bool) -> None:
    new = DecisionRecord(1, NOW, DecisionKind.WAIT, "waiting: host1 disk 93% busy", {"host": "host1", "busy": 93.0})
    assert new.repeats(last) is expected
