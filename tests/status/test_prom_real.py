"""The Grafana board against a real Prometheus (Debian's ``prometheus`` package, started here on
loopback, scraping an in-process batchd during a run): every panel's expression evaluates without error
and returns data, not only "names a metric that exists". Skipped where the binary is not installed."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchd.daemon import Daemon
from batchd.run import runner as runner_module
from batchd.run.vram import VramReading
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.running import REPO
from tests.support.waiting import until

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="needs Debian's prometheus package (apt-get install prometheus)"),
]
GB = 1024**3


class Card:
    """A GPU memory source with a size (NVML's shape), so the VRAM panel has both lines."""

    name = "nvml"
    interval = 0.2

    async def read(self) -> VramReading:
        return VramReading(used_bytes=9 * GB, total_bytes=24 * GB, source="nvml")

    def close(self) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def expressions() -> list[tuple[str, str]]:
    board = json.loads((REPO / "packaging" / "grafana-dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def query(port: int, expr: str) -> dict[str, Any]:
    promql = expr.replace("$__rate_interval", "30s").replace("$instance", ".*")
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
        loaded: dict[str, Any] = json.loads(answer.read())
    return loaded


def test_every_panel_returns_data_from_a_real_prometheus(
    make_settings: Callable[..., Any],
    emulator: Emulator,
    folders: Folders,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner_module, "pick_source", lambda settings, backend: Card())
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: batchd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
    )
    prom = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    settings = make_settings(
        metrics={"listen": f"127.0.0.1:{metrics_port}", "interval_seconds": 0.5},
        backend={"lanes": 2},
        notify={"command": [sys.executable, "-c", "pass"]},
    )
    emulator.latency = 0.01
    daemon = Daemon(settings=settings)
    answers: dict[str, dict[str, Any]] = {}

    def up() -> bool:
        try:
            return bool(query(prom_port, "up")["data"]["result"])
        except OSError:
            return False

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        try:
            await until(up, timeout=60)
            # failures (invalid lines), retries (503s), finished jobs and notifications; then a long
            # conversation job (context trims) running while a bigger one waits and a small one overtakes it
            write_jsonl(folders.inbox / "first.jsonl", 30, bad_every=10)
            await until(lambda: (folders.outbox / "first").exists(), timeout=60)
            emulator.fail_next(503, count=3)
            write_jsonl(folders.inbox / "long.jsonl", 3000, start=1000)
            await until(lambda: daemon.current is not None and daemon.current.done > 100, timeout=60)
            write_jsonl(folders.inbox / "later.jsonl", 5000, start=10_000)  # waits: priority label
            write_jsonl(folders.inbox / "small.jsonl", 5, start=50_000)  # overtakes: a preemption
            await until(lambda: (folders.outbox / "small").exists(), timeout=60)
            await asyncio.sleep(8)  # a few scrapes while the long job runs again
            pending = set(expressions())
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                for title, expr in sorted(pending):
                    answer = await asyncio.to_thread(query, prom_port, expr)
                    answers[expr] = answer
                    if answer["status"] == "success" and answer["data"]["result"]:
                        pending.discard((title, expr))
                await asyncio.sleep(1)
        finally:
            daemon.stop.set()
            await task
            await daemon.aclose()

    try:
        asyncio.run(scenario())
    finally:
        prom.terminate()
        prom.wait(timeout=30)
    assert set(answers) == {e for _, e in expressions()} and len(answers) >= 19, len(answers)
    empty = {expr: a.get("error") or "no data" for expr, a in answers.items() if not a.get("data", {}).get("result")}
    assert not empty, empty
