"""The Prometheus endpoint: ``GET /metrics`` and nothing else, on a bounded server.

Unlike ``prometheus_client.start_http_server`` (a thread per connection, no timeout,
any path answered), a caller cannot pile up threads here: at most
``max_connections`` requests are served at once, a further connection is closed at
once, and a request that does not arrive whole within ``timeout`` seconds is dropped.
The endpoint has its own address, loopback by default, since it has no authentication.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["MetricsServer"]


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/metrics":
            self.send_error(404, "Only /metrics is served here.")
            return
        body = generate_latest(self.server.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes are not news; refusals are counted by nobody and logged by nobody.
        del format, args


class MetricsServer(ThreadingMixIn, HTTPServer):
    """Serves ``registry`` at ``http://host:port/metrics`` until :meth:`close`.

    Args:
        registry: What to expose.
        host: The address to listen on.
        port: The port; 0 for any free one.
        timeout: Seconds a connection may take to send its request. Default 5.
        max_connections: Requests served at once; more are closed unanswered.
            Default 8.
    """

    daemon_threads = True
    # Threads end with their connection; the server does not wait for them on close.
    block_on_close = False

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        max_connections: int = 8,
    ) -> None:
        self.registry = registry
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # StreamRequestHandler puts its class's timeout on each connection's socket.
        handler = type("_TimedHandler", (_Handler,), {"timeout": timeout})
        super().__init__((host, port), handler)
        self._thread = threading.Thread(
            target=self.serve_forever, name="pdfbatch-metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Stop serving and close the socket."""
        self.shutdown()
        self.server_close()
        self._thread.join()
