"""Serve the API from inside the daemon: uvicorn on the daemon's own event loop.

The socket is bound here (a clear error instead of uvicorn's ``sys.exit``
when the port is taken, raised by ``start_api()`` before its first await),
uvicorn's signal capture is switched off (the daemon owns SIGTERM), and the
server stops when the daemon's stop event is set or its task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Generator

import structlog
import uvicorn

from batchd.aio import wait_first
from batchd.api.app import create_app
from batchd.api.batches import BatchService
from batchd.api.listen import check_listen, ensure_installed
from batchd.api.uploads import sweep
from batchd.config import Settings
from batchd.errors import BatchdError, ConfigError
from batchd.intake.samework import Probe, no_probe
from batchd.journal import Journal

log = structlog.get_logger("batchd.api")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError("api.listen", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The daemon's handlers stay in charge of SIGTERM/SIGINT; we stop via the stop event.
        yield


def start_api(
    settings: Settings,
    stop_event: asyncio.Event,
    *,
    journal: Journal | None = None,
    on_queued: Callable[[], None] | None = None,
    probe: Probe = no_probe,
) -> asyncio.Task[None]:
    """Check the setting and bind now (ConfigError here, before any await), then serve in a task.

    Call from the running loop. The task ends when ``stop_event`` is set or it is cancelled.
    ``journal``: share the daemon's (used on the loop thread only); by default the API
    opens its own connection to the same database. ``on_queued``: called on the loop
    when an uploaded batch is queued, so the daemon's job loop wakes at once. ``probe``: asks the
    server which model it serves, for an upload whose duplicate key matches a job that ran.
    """
    ensure_installed()
    host, port = check_listen(settings)
    sock = bind(host, port)
    try:
        own = journal is None
        db = journal or Journal(settings.journal_path)
        service = BatchService(settings=settings, journal=db, on_queued=on_queued, probe=probe)
        sweep(service.uploads)
        service.retention.expire()
    except BaseException:
        sock.close()
        raise
    log.info("api_listening", host=host, port=sock.getsockname()[1], auth=bool(settings.api.token))
    return asyncio.create_task(_serve(settings, stop_event, sock, service, close_journal=own), name="batchd-api")


async def serve(
    settings: Settings,
    stop_event: asyncio.Event,
    *,
    journal: Journal | None = None,
    on_queued: Callable[[], None] | None = None,
) -> None:
    """Run the API until ``stop_event`` is set (or this coroutine is cancelled)."""
    task = start_api(settings, stop_event, journal=journal, on_queued=on_queued)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()  # its finally block shuts uvicorn down
        await asyncio.gather(task, return_exceptions=True)
        raise


async def _serve(
    settings: Settings, stop_event: asyncio.Event, sock: socket.socket, service: BatchService, *, close_journal: bool
) -> None:
    app = create_app(
        service,
        token=settings.api.token,
        listen_host=check_listen(settings)[0],
        allowed_hosts=tuple(settings.api.allowed_hosts),
    )
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http="h11",
        ws="none",
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
        limit_concurrency=64,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="batchd-api-uvicorn")
    try:
        await wait_first(task, stop_event.wait())  # uvicorn's task stays ours: stopped below
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise BatchdError(f"API server stopped: {task.exception()}") from task.exception()
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        if service.pending:
            # Ingest is restartable; waiting a little only saves redoing it at the next start.
            await asyncio.wait(list(service.pending.values()), timeout=settings.shutdown_grace_seconds)
        service.closed = True
        sock.close()
        if close_journal:
            service.journal.close()
        log.info("api_stopped")
