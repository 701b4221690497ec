"""What one receiving session may make this agent hold or reserve (DESIGN §5 "Budgets for strangers").

A job's manifest is held per directory, not per entry (``listing.py``: the names of the directory being
listed; --delete's names of the others wait in a nameless temp file), and needed files only until their bytes
arrived; ``max_entries`` still caps a session's entries, and a source that ignores the sender's window
(``window.py``) can make the receiver hold needed entries up to it. Hard links wait for the end, and a watch
session's restricted manifest and the renames and deletes of its round are held whole (they are its change
set). ``free_margin`` is
what a preallocation must leave free on the destination filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass

from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ProtocolError
from zcrepl.core.settings import default_of


class LimitExceeded(ProtocolError):
    """A source sent more than a session budget allows: another attempt would send the same, so none is made
    until an operator raises the setting the message names."""

    retryable = False


@dataclass(frozen=True)
class SessionLimits:
    """AgentConfig's limits of one session; the daemon builds it with ``from_config``. Built without a config
    (tests, local copies) it holds AgentConfig's defaults, read from there so that they are written once."""

    max_entries: int = default_of(AgentConfig, "max_manifest_entries")
    max_hardlinks: int = default_of(AgentConfig, "max_hardlinks")
    max_changes_bytes: int = default_of(AgentConfig, "max_changes_bytes")
    free_margin: int = default_of(AgentConfig, "free_margin_bytes")

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> SessionLimits:
        return cls(cfg.max_manifest_entries, cfg.max_hardlinks, cfg.max_changes_bytes, cfg.free_margin_bytes)
