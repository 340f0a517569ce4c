"""The HTTP API in a test: ``ApiHarness`` runs the real daemon (``Daemon.run()``) and ``serve()`` on one
asyncio loop in a background thread, exactly as ``batchd run`` would with ``api.listen`` set; plus the small
client helpers the API tests share (upload, a generated JSONL body, the spool's files)."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import httpx

from batchd.api.listen import check_listen
from batchd.api.server import serve
from batchd.config import Settings
from batchd.daemon import Daemon
from tests.support.factories import write_jsonl
from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ApiHarness:
    """The daemon plus the API on a private event loop in a thread; ``close()`` stops both."""

    def __init__(self, settings: Settings, *, daemon: bool = True) -> None:
        self.settings = settings
        self.with_daemon = daemon
        self.url = "http://{}:{}".format(*check_listen(settings))
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="api-harness", daemon=True)

    def start(self) -> ApiHarness:
        self._thread.start()

        def up() -> bool:
            if self.error is not None or not self._thread.is_alive():
                raise AssertionError(f"API did not start: {self.error!r}")
            try:
                httpx.get(self.url + "/v1/files", timeout=1, headers=self.auth())
                return True
            except httpx.TransportError:
                return False

        wait_for(up, timeout=20)
        return self

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api.token}"} if self.settings.api.token else {}

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported to the test through start()/close()
            self.error = exc

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.with_daemon:
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop)
            return
        daemon = Daemon(settings=self.settings)
        self._stop = daemon.stop
        try:
            await daemon.run()  # api.listen is set: the daemon serves the API itself, as in production
        finally:
            await daemon.aclose()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass  # loop already finished
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "daemon/API did not stop within 30 s"
        if self.error is not None:
            raise self.error


def upload(h: ApiHarness, data: bytes, *, name: str = "in.jsonl", purpose: str = "batch") -> httpx.Response:
    return httpx.post(
        h.url + "/v1/files", files={"file": (name, data)}, data={"purpose": purpose}, headers=h.auth(), timeout=10
    )


def jsonl(tmp_path: Path, n: int, **kw: Any) -> bytes:
    path = tmp_path / f"gen-{n}.jsonl"
    write_jsonl(path, n, **kw)
    return path.read_bytes()


def spool_files(settings: Settings) -> list[str]:
    folder = settings.state_dir / "spool" / "api"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []
