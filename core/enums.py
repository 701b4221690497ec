"""The enumerations of the job domain types, apart from the dataclasses of ``zcrepl.core.types`` (which
re-exports them): zc-ctl builds its parser's choices from them without paying for the dataclasses."""

from __future__ import annotations

import enum


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class Priority(enum.IntEnum):
    """A job's place in the queue. Waiting raises it (the controller's ``priority_aging``), so low never starves."""

    LOW = 0
    NORMAL = 1
    HIGH = 2


class Durability(enum.Enum):
    JOB = "job"  # what the job wrote is flushed before done (agent/transfer/flush.py)
    FILE = "file"  # fsync each file before its rename, and its directory after
    NONE = "none"  # the kernel's writeback decides (rsync's default)


class Compress(enum.IntEnum):
    """zstd on a job's data connections. A submission says what the operator asked (AUTO: the link's
    ``compress`` setting decides); an order carries the controller's decision, ON or OFF."""

    AUTO = 0
    ON = 1
    OFF = 2


MAX_COMPRESS_LEVEL = 19
"""The highest zstd level a job may ask for: 20-22 ("ultra") want windows a 1 MiB piece of the data plane never
uses."""
