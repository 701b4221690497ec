from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from zchelpers import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A controller and two agents (hostA exports tmp/a, hostB exports tmp/b), all real processes."""
    c = Cluster(tmp_path)
    try:
        c.controller.start()
        a = c.add_agent("hostA", tmp_path / "a")
        b = c.add_agent("hostB", tmp_path / "b")
        a.start()
        b.start()
        c.wait_online("hostA", "hostB")
        yield c
    finally:
        c.close()
