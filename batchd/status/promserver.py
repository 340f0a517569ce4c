"""The ``/metrics`` listener: a few handler threads at most, and a deadline on every connection.

``prometheus_client.start_http_server`` spends a thread per connection for as long as the client
keeps it open, so idle connections from any local user exhausted the unit's task limit (issue 22,
item 8). Here at most ``MAX_CONNECTIONS`` are handled at once (one more is closed at once, unread)
and a connection that sends nothing for ``IDLE_SECONDS`` is dropped.
"""

from __future__ import annotations

import socket
import threading
from http.server import HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

#: connections handled at once; Prometheus itself needs one
MAX_CONNECTIONS = 8
#: a connection quiet this long (no request line, no header) is closed
IDLE_SECONDS = 5.0


class MetricsServer(ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[Any], *, family: int, max_connections: int) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: close it rather than queue a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    max_connections: int = MAX_CONNECTIONS,
    idle_seconds: float = IDLE_SECONDS,
) -> MetricsServer:
    """Listen on ``host:port`` in a daemon thread; OSError when the address cannot be bound."""
    base = MetricsHandler.factory(registry)

    class Handler(base):  # type: ignore[valid-type, misc]
        timeout = idle_seconds

        def log_message(self, format: str, *args: Any) -> None:
            return None

    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server = MetricsServer((str(sockaddr[0]), port), Handler, family=family, max_connections=max_connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
