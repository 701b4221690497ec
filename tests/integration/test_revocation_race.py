"""A revocation closes the revoked agent's session whoever reads the new list first: the controller's own
once-a-second check, or a call's revocation check in the interceptor (which reloads the files as it goes)."""

from __future__ import annotations

from pathlib import Path

from zchelpers import ClusterPKI, FakeAgent, wait_for

from zcrepl.cli.client import ControllerClient
from zcrepl.controller.daemon import Controller
from zcrepl.core import pki
from zcrepl.core.config import ControllerConfig


def test_a_revocation_seen_first_by_a_call_still_closes_the_session(tmp_path: Path) -> None:
    keys = ClusterPKI(tmp_path / "pki")
    cert, key = keys.issue("controller", "controller")
    cfg = ControllerConfig(listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", state_dir=str(tmp_path / "state"),
                           ca=keys.ca, cert=cert, key=key, crl=keys.crl)
    with Controller(cfg) as c, ControllerClient(c.address, keys.trust()) as client:
        assert c.authority is not None

        def online() -> set[str]:
            return {a.info.name for a in client.agents() if a.online}

        agent = FakeAgent(c.address, "hostB", pki=keys)
        try:
            wait_for(lambda: "hostB" in online(), what="hostB to register")
            pki.revoke(keys.dir, "hostB")
            # What the interceptor does on a call: the new list is loaded before the controller's own check.
            c.authority.trust.refresh(force=True)
            wait_for(lambda: "hostB" not in online(), 10, what="the revoked agent's session to close")
        finally:
            agent.close()
