"""The metrics port: serves a registry on a free port, says clearly when its address is taken, stops cleanly."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from zcrepl.core.metricsserver import MetricsServer


def test_serves_the_registry_and_stops() -> None:
    registry = CollectorRegistry()
    Counter("zcrepl_test_things", "Things", registry=registry).inc(3)
    server = MetricsServer("127.0.0.1:0", registry).start()
    try:
        with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=5) as r:
            assert "zcrepl_test_things_total 3.0" in r.read().decode()
    finally:
        server.stop()


def test_address_in_use_is_one_clear_sentence() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot serve metrics on {taken}: .*choose another metrics_listen"):
            MetricsServer(taken, CollectorRegistry()).start()
