"""The ``/metrics`` HTTP port of a daemon: prometheus_client's WSGI server on an address of its own.

Plaintext HTTP like node_exporter (SECURITY.md says what it shows: host names and figures, never paths or
file names). Port 0 asks for a free port; ``address`` is what was bound.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from zcrepl.core.config import split_address


class MetricsServer:
    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        self.listen = listen
        self.registry = registry
        self.address = ""
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        host, port = split_address(self.listen)
        try:
            self._httpd, self._thread = start_http_server(port, host, self.registry)
        except OSError as err:
            raise OSError(f"cannot serve metrics on {self.listen}: {err.strerror or err}; "
                          "choose another metrics_listen address (--metrics-listen HOST:PORT)") from err
        self._thread.name = "zc-metrics-http"
        bound = self._httpd.server_port
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
