"""Issue 22 item 8: idle connections to ``/metrics`` cannot exhaust threads or take the endpoint down."""

from __future__ import annotations

import socket
import threading

import httpx

from batchd.config import MetricsSettings
from batchd.status import promserver
from batchd.status.prom import Exporter
from tests.support.waiting import wait_for


def test_idle_connections_do_not_take_a_thread_each_and_metrics_still_answer() -> None:
    exporter = Exporter(MetricsSettings(listen="127.0.0.1:0"))
    exporter.start()
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(60):
            idle.append(socket.create_connection(("127.0.0.1", exporter.port or 0), timeout=5))
        # Each accepted connection would be a thread by now; give the accept loop a moment to take them all.
        wait_for(lambda: threading.active_count() >= before + promserver.MAX_CONNECTIONS, timeout=10)
        assert threading.active_count() <= before + promserver.MAX_CONNECTIONS
        for s in idle:
            s.close()
        idle.clear()
        wait_for(
            lambda: _get(exporter.port) == 200,
            timeout=3 * promserver.IDLE_SECONDS + 10,
            describe=threading.active_count,
        )
    finally:
        for s in idle:
            s.close()
        exporter.stop()


def _get(port: int | None) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_a_silent_connection_is_closed_after_the_idle_deadline() -> None:
    from prometheus_client import CollectorRegistry

    server = promserver.serve("127.0.0.1", 0, CollectorRegistry(), idle_seconds=0.3)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as s:
            assert s.recv(1) == b""  # closed by the server, long before our own 10 s
    finally:
        server.shutdown()
        server.server_close()
